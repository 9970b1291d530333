"""CLIP score of an image against its prompt: ``100 * max(cos(E_image, E_text), 0)`` per image (torchmetrics'
``CLIPScore`` definition), with transformers' ``CLIPModel`` / ``CLIPProcessor`` read from a local folder.

Embeddings are the model's projected image and text embeddings (what ``get_image_features`` /
``get_text_features`` return); images go through the folder's ``CLIPProcessor`` (resize of the short side,
centre crop, CLIP's normalisation) as 8-bit RGB; prompts are tokenised with padding and truncated to the text
model's context (77 tokens for OpenAI CLIP), as torchmetrics does. Computed here rather than through
torchmetrics' ``clip_score`` because that function expects ``get_image_features`` to return a tensor, which
transformers 5 no longer does; the definition is the same, and the tests check it by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import CheckpointError, InputError
from ...imaging.image_ops import image_to_uint8
from .images import as_image_list
from .model_files import check_model_path


@dataclass
class ClipScorer:
    model: torch.nn.Module  # transformers CLIPModel, eval mode
    processor: object  # transformers CLIPProcessor
    device: torch.device
    variant: str  # recorded with every score: folder name and the vision tower's shape

    @torch.no_grad()
    def image_embeddings(self, images, batch_size: int = 16) -> torch.Tensor:
        """[N, D] float32 projected image embeddings (not normalised), one per image, in order."""
        images = as_image_list(images)
        out = []
        for start in range(0, len(images), batch_size):
            arrays = [image_to_uint8(im) for im in images[start:start + batch_size]]
            pixels = self.processor(images=arrays, return_tensors="pt")["pixel_values"].to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[N, D] float32 projected text embeddings (not normalised)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise InputError("CLIP score: every prompt must be a string")
        context = self.model.config.text_config.max_position_embeddings
        out = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.processor(text=prompts[start:start + batch_size], return_tensors="pt", padding=True,
                                    truncation=True, max_length=context)
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            out.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    def scores(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """[N] CLIP score of each image against its own prompt."""
        image_emb = self.image_embeddings(images)
        text_emb = self.text_embeddings(prompts)
        return clip_score_from_embeddings(image_emb, text_emb)


def clip_score_from_embeddings(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """[N] ``100 * max(cos, 0)`` of each row pair (embeddings as :class:`ClipScorer` returns them)."""
    if image_embeddings.shape != text_embeddings.shape:
        raise InputError(f"CLIP score: {image_embeddings.shape[0]} image embeddings of size "
                         f"{tuple(image_embeddings.shape[1:])} for {text_embeddings.shape[0]} prompts of size "
                         f"{tuple(text_embeddings.shape[1:])}: give one prompt per image")
    cos = torch.nn.functional.cosine_similarity(image_embeddings.double(), text_embeddings.double(), dim=-1, eps=0)
    return (100.0 * cos.clamp(min=0)).float()


def clip_variant(folder: str, config) -> str:
    import os

    vision = config.vision_config
    return (f"{os.path.basename(os.path.normpath(folder))} (ViT patch {vision.patch_size}, {vision.image_size} px, "
            f"{vision.num_hidden_layers} layers, embedding {config.projection_dim})")


def load_clip(folder: str, device=None) -> ClipScorer:
    """A CLIP model folder (``save_pretrained`` layout: config, weights, tokenizer, preprocessor) read from disk
    only. Raises ``MetricModelMissing`` when files are absent, ``CheckpointError`` when they do not load."""
    from transformers import CLIPModel, CLIPProcessor

    check_model_path("clip", folder)
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the CLIP model folder {folder!r}: {exc}") from None
    device = torch.device(device) if device is not None else torch.device("cpu")
    return ClipScorer(model.eval().to(device), processor, device, clip_variant(folder, model.config))
