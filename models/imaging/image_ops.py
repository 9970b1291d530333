"""Image layout helpers shared by the nodes, the command line and the training code.

ComfyUI layouts (also used by our pure code): IMAGE = float32 [B,H,W,C] in 0..1, MASK = float32 [B,H,W] in 0..1.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

log = logging.getLogger("salient_background")


def as_rgb_images(images: torch.Tensor, *, what: str = "image") -> torch.Tensor:
    """Coerce an IMAGE batch to float32 RGB [B,H,W,3] in 0..1.

    Accepts [H,W,C] or [B,H,W,C] with C = 1 (greyscale, repeated), 3, or 4 (RGBA: alpha dropped, as PIL's
    ``convert('RGB')`` does, which is what the reference feeds its networks). NaN/inf become 0 with a warning;
    values are clamped to [0,1].
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{what}: expected a torch tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise InputError(f"{what}: expected [B,H,W,C] (ComfyUI IMAGE), got shape {tuple(images.shape)}")
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    elif channels == 4:
        images = images[..., :3]
    elif channels == 2:  # greyscale + alpha
        images = images[..., :1].expand(-1, -1, -1, 3)
    elif channels != 3:
        raise InputError(f"{what}: expected 1, 3 or 4 channels in the last dimension, got {channels} (shape {tuple(images.shape)})")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InputError(f"{what}: empty image of size {images.shape[2]}x{images.shape[1]}")
    images = images.float()
    if not torch.isfinite(images).all():
        log.warning("%s contains NaN or infinite values; they were replaced by 0", what)
        images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return images.clamp(0.0, 1.0).contiguous()


def as_mask_batch(masks: torch.Tensor, *, what: str = "mask") -> torch.Tensor:
    """Coerce a MASK to float32 [B,H,W] in 0..1 ([H,W] gets a batch dimension; NaN becomes 0)."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{what}: expected a torch tensor, got {type(masks).__name__}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 4 and masks.shape[-1] == 1:  # [B,H,W,1] from some packs
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise InputError(f"{what}: expected [B,H,W] (ComfyUI MASK), got shape {tuple(masks.shape)}")
    masks = masks.float()
    if not torch.isfinite(masks).all():
        log.warning("%s contains NaN or infinite values; they were replaced by 0", what)
        masks = torch.nan_to_num(masks, nan=0.0, posinf=1.0, neginf=0.0)
    return masks.clamp(0.0, 1.0).contiguous()


def match_mask_to_images(masks: torch.Tensor, images: torch.Tensor, *, what: str = "object_mask") -> torch.Tensor:
    """Return masks [B,H,W] aligned with images [B,H,W,C]: one mask is broadcast over the batch; a mask of a
    different size is refused with the sizes that met (resizing silently would move the object)."""
    masks = as_mask_batch(masks, what=what)
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    if masks.shape[1:] != (h, w):
        raise InputError(
            f"{what} is {masks.shape[2]}x{masks.shape[1]} but the image is {w}x{h}: "
            "give a mask made from this image (or resize it with a mask resize node first)"
        )
    if masks.shape[0] == b:
        return masks
    if masks.shape[0] == 1:
        return masks.expand(b, h, w).contiguous()
    raise InputError(f"{what} batch of {masks.shape[0]} does not match the image batch of {b}: give 1 mask or {b}")


def resize_masks(masks: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize [B,H,W] masks (bilinear for soft masks, nearest-exact for binary ones)."""
    if masks.shape[-2:] == (height, width):
        return masks
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(masks[:, None], size=(height, width), mode=mode, **kwargs)[:, 0].clamp(0, 1)


# ---------------------------------------------------------------------------------------------- PIL <-> tensor
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)


def _sixteen_bit_to_unit(image: Image.Image) -> np.ndarray:
    """A 16-bit (or 32-bit integer) greyscale picture -> float32 [H,W] in 0..1: full scale 65535, or 255 when no
    value exceeds 255 (an 8-bit picture stored in a wider mode)."""
    arr = np.asarray(image).astype(np.float32)
    return arr / (65535.0 if arr.max() > 255 else 255.0)


def pil_to_image(image: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PIL image -> (IMAGE [1,H,W,3] float 0..1, alpha [1,H,W] or None). Alpha is returned separately."""
    alpha = None
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        alpha = torch.from_numpy(np.asarray(rgba)[..., 3].astype(np.float32) / 255.0)[None]
    if image.mode in SIXTEEN_BIT_MODES:
        rgb = np.repeat(_sixteen_bit_to_unit(image)[..., None], 3, axis=-1)
    else:
        rgb = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(rgb)[None], alpha


def mask_from_pil(image: Image.Image) -> np.ndarray:
    """The one reading of a mask picture (every command and node): float32 [H,W] in 0..1, white = object; a
    picture with alpha uses its alpha; a 16-bit one is scaled as :func:`pil_to_image` scales it."""
    if _has_alpha(image):
        return np.asarray(image.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_unit(image)
    return np.asarray(image.convert("L")).astype(np.float32) / 255.0


def read_mask_file(path: str) -> np.ndarray:
    """Mask file -> float32 [H,W] in 0..1 (:func:`mask_from_pil`), as shown (EXIF orientation applied, as to the
    photos); an unreadable file or a decompression bomb is an :class:`InputError` that names it
    (:func:`models.imaging.picture_files.open_picture`)."""
    from .picture_files import open_picture

    try:
        return mask_from_pil(open_picture(path))
    except InputError as exc:
        raise InputError(f"cannot read mask: {exc}") from None


def unit_to_pil_mask(mask: np.ndarray) -> Image.Image:
    """float [H,W] in 0..1 -> PIL 'L' (rounded: an 8-bit mask read by :func:`read_mask_file` comes back unchanged)."""
    return Image.fromarray(np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8), mode="L")


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H,W,C] float 0..1 -> uint8 array (rounded, as ComfyUI's SaveImage does with clip)."""
    return np.clip(image.detach().cpu().float().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)


def mask_to_pil(mask: torch.Tensor) -> Image.Image:
    """[H,W] float 0..1 -> 8-bit greyscale PIL image (white = 1)."""
    return Image.fromarray(image_to_uint8(mask[..., None])[..., 0], mode="L")


def cutout_rgba(image: torch.Tensor, object_mask: torch.Tensor) -> Image.Image:
    """[H,W,3] image + [H,W] object mask -> RGBA PIL image with the mask as alpha."""
    rgba = torch.cat([image[..., :3], object_mask[..., None]], dim=-1)
    return Image.fromarray(image_to_uint8(rgba), mode="RGBA")


def composite_on_colour(images: torch.Tensor, object_masks: torch.Tensor, colour=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """Object over a flat colour: images [B,H,W,3], masks [B,H,W] (1 = object) -> [B,H,W,3]."""
    background = torch.tensor(colour, dtype=images.dtype, device=images.device)
    alpha = object_masks[..., None].to(images.dtype)
    return images * alpha + background * (1 - alpha)


def overlay_mask(images: torch.Tensor, masks: torch.Tensor, colour=(1.0, 0.15, 0.1), opacity: float = 0.5) -> torch.Tensor:
    """Preview: tint the masked region of each image. images [B,H,W,3], masks [B,H,W] -> [B,H,W,3]."""
    tint = torch.tensor(colour, dtype=images.dtype, device=images.device)
    weight = (masks[..., None] * opacity).to(images.dtype)
    return images * (1 - weight) + tint * weight
