"""The per-step inputs of SD2-inpainting + the salient-aware ControlNet, built in one place.

Used by the ComfyUI conditioning node and by the standalone diffusers pipeline, so both feed the model the same
tensors as the reference (yahoo/photo-background-generation).

Polarities and ranges (the mask given is ``object_mask``, 1 = object; it is inverted here, once):

============== ============== =====================================================================================
tensor         shape          content
============== ============== =====================================================================================
repaint_mask   [B,1,H,W]      ``1 - object_mask`` binarised: 1 where ``1 - object_mask >= 0.5`` (background to
                              generate), 0 on the object to keep. Exactly {0, 1}. UNet/ControlNet channel 5 after
                              :func:`latent_mask` (nearest downsampling, as the reference).
hint           [B,3,H,W]      ControlNet conditioning image: ``1 - object_mask``, **soft** (not binarised), in
                              [0,1], not normalised, repeated on 3 channels. Background = 1, object = 0.
masked_image   [B,3,H,W]      the photo in [-1,1] (``2*image - 1``) times ``(repaint_mask < 0.5)``: object pixels
                              kept, background set to 0 (mid grey). VAE-encode it (times the VAE scaling factor
                              0.18215) for UNet/ControlNet channels 6-9.
============== ============== =====================================================================================

Batching: image batch Bi and mask batch Bm must be equal, or one of them 1 (broadcast). Image and mask must have
the same height and width (frame both with the same transform first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

BINARISE_AT = 0.5


@dataclass
class InpaintInputs:
    repaint_mask: torch.Tensor  # [B,1,H,W] float in {0,1}; 1 = background to generate
    hint: torch.Tensor  # [B,3,H,W] float in [0,1]; soft 1 - object_mask
    masked_image: torch.Tensor  # [B,3,H,W] float in [-1,1]; background = 0

    def masked_image_bhwc01(self) -> torch.Tensor:
        """``masked_image`` as a ComfyUI IMAGE ([B,H,W,3] in [0,1]; background 0.5), for ComfyUI's VAE encode."""
        return ((self.masked_image + 1.0) / 2.0).permute(0, 2, 3, 1).contiguous()

    def hint_bhwc(self) -> torch.Tensor:
        """``hint`` as a ComfyUI IMAGE ([B,H,W,3] in [0,1])."""
        return self.hint.permute(0, 2, 3, 1).contiguous()


def _image_bchw(image: torch.Tensor, layout: str) -> torch.Tensor:
    if layout not in ("BHWC", "BCHW"):
        raise ValueError(f"layout must be 'BHWC' or 'BCHW', got {layout!r}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise InputError(f"image must be [B,H,W,C] or [B,C,H,W], got shape {tuple(image.shape)}")
    if layout == "BHWC":
        image = image.permute(0, 3, 1, 2)
    c = image.shape[1]
    if c == 4:  # RGBA: drop alpha
        image = image[:, :3]
    elif c == 1:
        image = image.expand(-1, 3, -1, -1)
    elif c != 3:
        raise InputError(f"image must have 1, 3 or 4 channels, got {c} (layout {layout}, shape {tuple(image.shape)})")
    return image.float()


def _mask_b1hw(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    elif mask.ndim != 4 or mask.shape[1] != 1:
        raise InputError(f"object_mask must be [H,W], [B,H,W] or [B,1,H,W], got shape {tuple(mask.shape)}")
    return mask.float()


def build_inpaint_inputs(image: torch.Tensor, object_mask: torch.Tensor, *, layout: str = "BHWC") -> InpaintInputs:
    """Build (repaint_mask, hint, masked_image) from a photo in [0,1] and its ``object_mask`` (1 = object).

    ``image``: [B,H,W,C] (``layout="BHWC"``, ComfyUI IMAGE) or [B,C,H,W] (``layout="BCHW"``), values in [0,1].
    ``object_mask``: [H,W], [B,H,W] or [B,1,H,W] in [0,1], soft or binary. See the module docstring for the
    outputs' polarities and ranges.
    """
    img = _image_bchw(image, layout)
    mask = _mask_b1hw(object_mask).to(img.device)
    if tuple(img.shape[-2:]) != tuple(mask.shape[-2:]):
        raise InputError(
            f"image is {img.shape[-2]}x{img.shape[-1]} (HxW) but object_mask is {mask.shape[-2]}x{mask.shape[-1]}; "
            "they must be the same size (frame both with the same transform)"
        )
    bi, bm = img.shape[0], mask.shape[0]
    if bi != bm and 1 not in (bi, bm):
        raise InputError(f"image batch of {bi} and mask batch of {bm} do not match (use equal batches, or one of 1)")
    b = max(bi, bm)
    img = img.expand(b, -1, -1, -1)
    mask = mask.clamp(0.0, 1.0).expand(b, -1, -1, -1)

    inverted = 1.0 - mask  # soft, 1 = background
    repaint = (inverted >= BINARISE_AT).to(img.dtype)
    hint = inverted.expand(-1, 3, -1, -1).contiguous()
    masked_image = (img * 2.0 - 1.0) * (repaint < 0.5).to(img.dtype)
    return InpaintInputs(repaint_mask=repaint.contiguous(), hint=hint, masked_image=masked_image.contiguous())


def latent_mask(repaint_mask: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Downsample the [B,1,H,W] repaint mask to latent size as the reference does (``F.interpolate`` nearest)."""
    return F.interpolate(repaint_mask, size=(latent_h, latent_w))
