"""Framing for SD2: fit a photo into the model's canvas (letterbox), optionally around the object, and back.

The reference (yahoo/photo-background-generation) letterboxes every photo into 512x512: PIL ``thumbnail``
(downscale only, aspect ratio kept, bicubic) then centre padding with black. :func:`fit_transform` computes
exactly that geometry (same size rounding as PIL); ``allow_upscale=True`` also enlarges small photos (the
reference does not, and its users report poor results on small images). :func:`crop_transform` frames a box
around the object with a margin instead of the whole photo.

A :class:`FrameTransform` is plain data (JSON-serialisable through :meth:`FrameTransform.to_dict`):

    source (src_h x src_w) --crop--> crop box (crop_top, crop_left, crop_h, crop_w)
        --resize--> (scaled_h x scaled_w) --pad--> canvas (target_h x target_w) at (pad_top, pad_left)

:func:`apply` maps images [B,H,W,C] / masks [B,H,W] (ComfyUI layouts, values in [0,1]) forward;
:func:`restore` maps canvas-sized results back to the source size and position (pasting into the original
when given, so pixels outside the crop box come from it). :func:`apply_pil` does the forward step with PIL
exactly as the reference does (for command-line use).

The steps that both the ``generate`` command and the ComfyUI nodes take live here once: :func:`choose_transform`
(fit or crop, from the user's options), :class:`FrameRecord` (the transforms of a batch), :func:`frame_batch`,
:func:`small_object_warning` (framing left the object too small to be useful) and :func:`crop_to_multiple` (the
model inputs' size must be a multiple of the VAE's downscale factor).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..errors import InputError

Size = Union[int, tuple[int, int]]


@dataclass(frozen=True)
class FrameTransform:
    src_h: int
    src_w: int
    crop_top: int
    crop_left: int
    crop_h: int
    crop_w: int
    scaled_h: int
    scaled_w: int
    pad_top: int
    pad_left: int
    target_h: int
    target_w: int

    @property
    def resized(self) -> bool:
        return (self.scaled_h, self.scaled_w) != (self.crop_h, self.crop_w)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrameTransform":
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})

    def content_box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the photo inside the canvas (the rest is padding)."""
        return self.pad_top, self.pad_left, self.pad_top + self.scaled_h, self.pad_left + self.scaled_w


def _target_hw(target: Size) -> tuple[int, int]:
    if isinstance(target, int):
        th = tw = target
    else:
        th, tw = (int(v) for v in target)
    if th <= 0 or tw <= 0:
        raise InputError(f"frame size must be positive, got {th}x{tw}")
    return th, tw


def fitted_size(h: int, w: int, target: Size = 512, allow_upscale: bool = False) -> tuple[int, int]:
    """(height, width) of an h x w picture fitted inside ``target`` keeping its aspect ratio.

    Same rounding as PIL ``Image.thumbnail``; without ``allow_upscale`` a picture that already fits keeps its size.
    """
    if h <= 0 or w <= 0:
        raise InputError(f"cannot frame an empty picture ({h}x{w})")
    th, tw = _target_hw(target)
    if not allow_upscale and tw >= w and th >= h:
        return h, w

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    aspect = w / h
    x, y = tw, th
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return y, x


def _letterbox(src_h, src_w, top, left, ch, cw, target, allow_upscale) -> FrameTransform:
    th, tw = _target_hw(target)
    sh, sw = fitted_size(ch, cw, (th, tw), allow_upscale)
    return FrameTransform(
        src_h=src_h, src_w=src_w, crop_top=top, crop_left=left, crop_h=ch, crop_w=cw,
        scaled_h=sh, scaled_w=sw, pad_top=(th - sh) // 2, pad_left=(tw - sw) // 2, target_h=th, target_w=tw,
    )


def fit_transform(h: int, w: int, target: Size = 512, allow_upscale: bool = False) -> FrameTransform:
    """Letterbox the whole h x w picture into ``target`` (int for a square, or (height, width)), centre-padded.

    ``allow_upscale=False`` is the reference behaviour (downscale only; a small photo is padded, not enlarged).
    """
    return _letterbox(h, w, 0, 0, h, w, target, allow_upscale)


def object_box(object_mask: torch.Tensor, threshold: float = 0.5) -> Optional[tuple[int, int, int, int]]:
    """(top, left, bottom, right) bounding box of ``object_mask > threshold`` ([H,W]); None when empty."""
    m = object_mask > threshold
    if not bool(m.any()):
        return None
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_transform(
    object_mask: torch.Tensor,
    margin: float = 0.25,
    target: Size = 512,
    allow_upscale: bool = True,
    threshold: float = 0.5,
) -> FrameTransform:
    """Frame a box around the object instead of the whole photo.

    The object's bounding box grows by ``margin`` times its longer side on every side, then to the canvas aspect
    ratio around its centre, is shifted to stay inside the photo and clipped to it; that box is letterboxed into
    ``target``. An empty mask frames the whole photo. ``object_mask``: [H,W] (or [1,H,W]), 1 = object.
    """
    if object_mask.ndim == 3:
        object_mask = object_mask[0]
    if object_mask.ndim != 2:
        raise InputError(f"crop_transform expects one [H,W] mask, got shape {tuple(object_mask.shape)}")
    if margin < 0:
        raise InputError(f"margin must be >= 0, got {margin}")
    H, W = object_mask.shape
    box = object_box(object_mask, threshold)
    if box is None:
        return fit_transform(H, W, target, allow_upscale)
    th, tw = _target_hw(target)
    top, left, bottom, right = box
    bh, bw = bottom - top, right - left
    grow = margin * max(bh, bw)
    bh, bw = bh + 2 * grow, bw + 2 * grow
    # widen the short side to the canvas aspect ratio
    if bw / bh < tw / th:
        bw = bh * tw / th
    else:
        bh = bw * th / tw
    ch, cw = min(H, max(1, round(bh))), min(W, max(1, round(bw)))
    cy, cx = (top + bottom) / 2, (left + right) / 2
    ct = int(min(max(round(cy - ch / 2), 0), H - ch))
    cl = int(min(max(round(cx - cw / 2), 0), W - cw))
    return _letterbox(H, W, ct, cl, ch, cw, (th, tw), allow_upscale)


# ---------------------------------------------------------------------------------------------- tensors
def _as_bchw(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """IMAGE [B,H,W,C] -> [B,C,H,W]; MASK [B,H,W] -> [B,1,H,W]. Returns (tensor, is_mask)."""
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2), False
    if x.ndim == 3:
        return x[:, None], True
    if x.ndim == 2:
        return x[None, None], True
    raise InputError(f"expected an IMAGE [B,H,W,C] or MASK [B,H,W], got shape {tuple(x.shape)}")


def _back(x: torch.Tensor, is_mask: bool, ndim: int) -> torch.Tensor:
    if is_mask:
        x = x[:, 0]
        return x[0] if ndim == 2 else x
    return x.permute(0, 2, 3, 1)


def resize_bchw(x: torch.Tensor, h: int, w: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize [B,C,H,W] in [0,1]; antialiased when shrinking (close to PIL), clamped to [0,1]."""
    if tuple(x.shape[-2:]) == (h, w):
        return x.clone()
    if mode == "nearest":
        return F.interpolate(x, size=(h, w), mode="nearest-exact")
    out = F.interpolate(x.float(), size=(h, w), mode=mode, align_corners=False, antialias=True)
    return out.clamp(0, 1).to(x.dtype)


def apply(x: torch.Tensor, t: FrameTransform, mode: str = "bicubic", fill: float = 0.0) -> torch.Tensor:
    """Crop, resize and pad an IMAGE [B,H,W,C] or MASK [B,H,W] (or [H,W]) to the canvas of ``t``."""
    ndim = x.ndim
    y, is_mask = _as_bchw(x)
    if tuple(y.shape[-2:]) != (t.src_h, t.src_w):
        raise InputError(
            f"this frame was computed for a {t.src_h}x{t.src_w} picture, got {y.shape[-2]}x{y.shape[-1]}"
        )
    y = y[..., t.crop_top:t.crop_top + t.crop_h, t.crop_left:t.crop_left + t.crop_w]
    y = resize_bchw(y, t.scaled_h, t.scaled_w, mode)
    out = torch.full((y.shape[0], y.shape[1], t.target_h, t.target_w), float(fill), dtype=y.dtype, device=y.device)
    out[..., t.pad_top:t.pad_top + t.scaled_h, t.pad_left:t.pad_left + t.scaled_w] = y
    return _back(out, is_mask, ndim)


def restore(
    x: torch.Tensor, t: FrameTransform, original: Optional[torch.Tensor] = None, mode: str = "bicubic"
) -> torch.Tensor:
    """Map a canvas-sized IMAGE/MASK back to the source size and position.

    The padding is dropped, the content resized to the crop box and placed there. Outside the crop box the result
    is ``original`` (same layout as ``x`` at source size; one item is broadcast over the batch) or 0.
    """
    ndim = x.ndim
    y, is_mask = _as_bchw(x)
    if tuple(y.shape[-2:]) != (t.target_h, t.target_w):
        raise InputError(
            f"restore expects the framed size {t.target_h}x{t.target_w}, got {y.shape[-2]}x{y.shape[-1]}; "
            "connect the output of the same Frame node (or do not resize in between)"
        )
    top, left, bottom, right = t.content_box()
    y = resize_bchw(y[..., top:bottom, left:right], t.crop_h, t.crop_w, mode)
    if original is not None:
        base, base_is_mask = _as_bchw(original.to(device=y.device, dtype=y.dtype))
        if base_is_mask != is_mask or tuple(base.shape[-2:]) != (t.src_h, t.src_w) or base.shape[1] != y.shape[1]:
            raise InputError(
                f"original has shape {tuple(original.shape)}, expected the source size {t.src_h}x{t.src_w} "
                f"with {y.shape[1]} channel(s)"
            )
        if base.shape[0] not in (1, y.shape[0]):
            raise InputError(f"original batch {base.shape[0]} does not match the result batch {y.shape[0]}")
        out = base.expand(y.shape[0], -1, -1, -1).clone()
    else:
        out = torch.zeros((y.shape[0], y.shape[1], t.src_h, t.src_w), dtype=y.dtype, device=y.device)
    out[..., t.crop_top:t.crop_top + t.crop_h, t.crop_left:t.crop_left + t.crop_w] = y
    return _back(out, is_mask, ndim)


def crop_region_mask(t: FrameTransform) -> torch.Tensor:
    """[src_h, src_w] mask: 1 on the part of the source that the frame covers."""
    m = torch.zeros(t.src_h, t.src_w)
    m[t.crop_top:t.crop_top + t.crop_h, t.crop_left:t.crop_left + t.crop_w] = 1.0
    return m


# ---------------------------------------------------------------------------------------------- PIL
def apply_pil(image, t: FrameTransform, fill=0):
    """The reference's letterbox with PIL: crop, ``resize`` as ``thumbnail`` does (bicubic, reducing_gap 2.0;
    any other resampling for upscaling too), paste centred on a ``fill`` canvas. Works for RGB and L images."""
    from PIL import Image

    if image.size != (t.src_w, t.src_h):
        raise InputError(f"this frame was computed for a {t.src_h}x{t.src_w} picture, got {image.size[1]}x{image.size[0]}")
    im = image.crop((t.crop_left, t.crop_top, t.crop_left + t.crop_w, t.crop_top + t.crop_h))
    if (t.scaled_w, t.scaled_h) != im.size:
        im = im.resize((t.scaled_w, t.scaled_h), Image.Resampling.BICUBIC, reducing_gap=2.0)
    canvas = Image.new(im.mode, (t.target_w, t.target_h), fill)
    canvas.paste(im, (t.pad_left, t.pad_top))
    return canvas


# ---------------------------------------------------------------------------------------------- shared by CLI and nodes
FIT, CROP = "fit", "crop"
FRAME_MODES = (FIT, CROP)
MIN_OBJECT_SIDE = 64  # px on the canvas; below it the object is too small for SD2 to keep recognisable


def choose_transform(
    h: int, w: int, mode: str, size: Size, *, allow_upscale: bool = False, margin: float = 0.25,
    object_mask: Optional[torch.Tensor] = None,
) -> FrameTransform:
    """The frame of an h x w photo: ``fit`` letterboxes it whole, ``crop`` frames its object (``object_mask``
    [H,W], 1 = object) with ``margin``. ``allow_upscale``: also enlarge content smaller than the canvas."""
    if mode == FIT:
        return fit_transform(h, w, size, allow_upscale=allow_upscale)
    if mode == CROP:
        if object_mask is None:
            raise InputError("framing around the object needs the object's mask")
        return crop_transform(object_mask, margin, size, allow_upscale=allow_upscale)
    raise InputError(f"unknown framing mode {mode!r}; one of {', '.join(FRAME_MODES)}")


class FrameRecord:
    """The frames of a batch: one :class:`FrameTransform` per item, or one for all (a SALIENT_FRAME socket's value)."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def for_item(self, i: int):
        return self.transforms[i] if len(self.transforms) > 1 else self.transforms[0]

    def __repr__(self):
        return f"FrameRecord({self.transforms!r})"


def frame_batch(
    images: torch.Tensor, masks: Optional[torch.Tensor], mode: str, size: int, *, allow_upscale: bool = False,
    margin: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor, FrameRecord]:
    """Frame IMAGE [B,H,W,C] and its object MASK [B,H,W] (or None: the framed mask is empty) for the model.

    Returns (framed images, framed masks, record): bicubic for the photo, bilinear for the mask."""
    b, h, w = images.shape[:3]
    if mode == FIT:
        transforms = [choose_transform(h, w, FIT, size, allow_upscale=allow_upscale)]
    else:
        if masks is None:
            raise InputError("framing around the object needs the object's mask")
        transforms = [choose_transform(h, w, mode, size, allow_upscale=allow_upscale, margin=margin, object_mask=masks[i])
                      for i in range(b)]
        if all(t == transforms[0] for t in transforms):
            transforms = transforms[:1]
    record = FrameRecord(transforms)
    out_images = torch.cat([apply(images[i:i + 1], record.for_item(i)) for i in range(b)])
    if masks is None:
        out_masks = torch.zeros(b, size, size)
    else:
        out_masks = torch.cat([apply(masks[i:i + 1], record.for_item(i), mode="bilinear") for i in range(b)])
    return out_images, out_masks, record


def small_object_warning(framed_mask: torch.Tensor, min_side: int = MIN_OBJECT_SIDE) -> Optional[str]:
    """A sentence when the object's box on the canvas (``framed_mask`` [H,W], 1 = object) has a side shorter than
    ``min_side`` pixels (e.g. a 3000x200 photo fitted into 512 becomes a 512x34 strip); None otherwise."""
    box = object_box(framed_mask)
    if box is None:
        return None
    box_h, box_w = box[2] - box[0], box[3] - box[1]
    if min(box_h, box_w) >= min_side:
        return None
    return (f"after framing, the object is only {box_w}x{box_h} px (WxH) on the {framed_mask.shape[-1]}x"
            f"{framed_mask.shape[-2]} canvas (under {min_side} px): the result will show little of it; frame it "
            "around the object (crop) or use a photo with a less extreme aspect ratio")


def crop_to_multiple(images: torch.Tensor, masks: torch.Tensor, multiple: int):
    """Centre-crop [B,H,W,C] images and [B,H,W] masks to multiples of ``multiple`` (as ComfyUI's VAE encode does)."""
    h, w = images.shape[1], images.shape[2]
    h8, w8 = (h // multiple) * multiple, (w // multiple) * multiple
    if h8 == 0 or w8 == 0:
        raise InputError(f"the image is {w}x{h}; it must be at least {multiple} pixels on each side")
    if (h8, w8) == (h, w):
        return images, masks
    top, left = (h % multiple) // 2, (w % multiple) // 2
    return images[:, top:top + h8, left:left + w8], masks[:, top:top + h8, left:left + w8]
