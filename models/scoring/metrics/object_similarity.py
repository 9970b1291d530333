"""Object similarity: how much the object still looks like itself after generation.

Definition: the cosine similarity of DINOv2 embeddings (transformers' ``Dinov2Model``, the layer-normed CLS token,
``pooler_output``) of the object in the input photo and in the generated image, each taken as the same crop:

1. the bounding box of the input object mask (``>= 0.5``), the same box in both images;
2. inside the box, every pixel outside the mask set to mid grey (so the new background does not count);
3. padded with the same grey to a square (centred), then resized to the processor's crop size (224 px) with the
   folder's image processor (no centre crop, which would cut the object's edges) and its normalisation.

Why DINOv2 and not CLIP: DINOv2 is self-supervised on images alone and its features keep an instance's appearance
(shape, texture, colour), whereas CLIP is trained to map everything a caption would name alike to one point, so two
different mugs score high. DreamBooth's "DINO" subject-fidelity metric is the same reasoning. Measure on the
*un-pasted* generation where the pipeline gives it: after paste-back the pixels inside the mask are the input's and
the score would be ~1 by construction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ...errors import CheckpointError, InputError
from ...imaging.image_ops import as_mask_batch, as_rgb_images, image_to_uint8
from .model_files import check_model_path

GREY = 0.5


@dataclass
class ObjectEncoder:
    model: torch.nn.Module  # transformers Dinov2Model, eval mode
    processor: object  # the folder's image processor
    device: torch.device
    variant: str

    @torch.no_grad()
    def embeddings(self, images, object_masks, batch_size: int = 16) -> torch.Tensor:
        """[B, D] float32 embeddings of the object crops of ``images`` [B,H,W,3] under ``object_masks`` [B,H,W]
        (or one [H,W] for all). An empty mask is an ``InputError`` naming the image."""
        crops = object_crops(images, object_masks)
        size = dict(self.processor.crop_size)  # {"height": 224, "width": 224}
        out = []
        for start in range(0, len(crops), batch_size):
            arrays = [image_to_uint8(c) for c in crops[start:start + batch_size]]
            pixels = self.processor(images=arrays, return_tensors="pt", do_center_crop=False,
                                    size=size)["pixel_values"].to(self.device)
            out.append(self.model(pixel_values=pixels).pooler_output.float().cpu())
        return torch.cat(out)


def object_crops(images, object_masks) -> list[torch.Tensor]:
    """The square, grey-surrounded object crop of each image ([h,h,3] each; see the module docstring)."""
    images = as_rgb_images(images, what="images")
    masks = as_mask_batch(object_masks, what="object_mask")
    if masks.shape[0] == 1:
        masks = masks.expand(images.shape[0], -1, -1)
    if masks.shape != images.shape[:3]:
        raise InputError(f"object masks {tuple(masks.shape)} do not match images {tuple(images.shape[:3])}")
    crops = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        inside = mask >= 0.5
        rows, cols = torch.nonzero(inside.any(dim=1)).flatten(), torch.nonzero(inside.any(dim=0)).flatten()
        if rows.numel() == 0:
            raise InputError(f"object similarity: the object mask of image {i} is empty")
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = torch.where(inside[top:bottom, left:right, None], image[top:bottom, left:right], GREY)
        h, w = bottom - top, right - left
        side = max(h, w)
        square = torch.full((side, side, 3), GREY)
        y, x = (side - h) // 2, (side - w) // 2
        square[y:y + h, x:x + w] = box
        crops.append(square)
    return crops


def object_similarity_from_embeddings(original: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """[B] cosine similarity of each row pair (-1..1; 1 = the same embedding)."""
    if original.shape != generated.shape:
        raise InputError(f"object similarity: {tuple(original.shape)} vs {tuple(generated.shape)} embeddings")
    return torch.nn.functional.cosine_similarity(original.double(), generated.double(), dim=-1).float()


def load_object_encoder(folder: str, device=None) -> ObjectEncoder:
    """A DINOv2 model folder (``save_pretrained`` layout) read from disk only."""
    from transformers import AutoImageProcessor, Dinov2Model

    check_model_path("object_similarity", folder)
    try:
        model = Dinov2Model.from_pretrained(folder, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the DINOv2 model folder {folder!r}: {exc}") from None
    config = model.config
    variant = (f"{os.path.basename(os.path.normpath(folder))} (ViT patch {config.patch_size}, "
               f"{config.num_hidden_layers} layers, embedding {config.hidden_size})")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return ObjectEncoder(model.eval().to(device), processor, device, variant)
