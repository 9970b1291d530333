"""The object-expansion score of arXiv 2404.10157, and the reference notebook's signed salient variant.

SAM protocol (``score_expansion``), per generated image:

1. ``m_i``: the input object mask, resized to the generated image's size if needed (see *sizes* below) and
   binarised at 0.5 (``>= 0.5`` is object).
2. Prompts from ``m_i``: ``points`` positive points (default 8) spread over it by interior distance, seeded
   (``models/networks/sam/prompts.py``); no negative points and no box by default, because both tell SAM where the object
   *ends* and would hide the very growth being measured.
3. ``m_o``: SAM's mask of the object in the *generated* image (one image embedding per image, any number of prompt
   sets reuse it), output chosen by ``mask_choice`` (default ``auto``, see ``models/networks/sam/session.py``).
4. ``E = area(m_o ∪ m_i) − area(m_i)`` = the pixels SAM calls object outside ``m_i``, reported in pixels, as a
   fraction of the image (``E / (H W)``) and relative to the object (``E / area(m_i)``). Also reported: ``lost`` =
   ``area(m_i \\ m_o)`` (object pixels SAM did not recover; not part of E) and the IoU of the two masks.

Undefined and mismatched cases:

* An empty ``m_i`` (no pixel ``>= 0.5``) gives NaN for every score, with a warning; never 0, never an exception.
* Sizes: a mask of a different size than the generated image is resized to it (bilinear on the soft mask, then
  binarised), with a warning, **only if the aspect ratios agree** within 1 % (the generator ran at another
  resolution of the same framing). A different aspect ratio means a different framing (a letterboxed or cropped
  generation): the score would be meaningless, so an :class:`InputError` names both sizes.

Signed salient variant (``signed_salient_change``), as the reference notebook computes it:
``mean(m_o > 127) − mean(m_i > 127)`` on 8-bit maps, where ``m_o`` is the salient model's (InSPyReNet) map of the
generated image and ``m_i`` the salient mask of the original; each mean is over its own image, so it is a
difference of object-area fractions (positive = the object grew, negative = it shrank) and needs no resizing.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..imaging.image_ops import as_mask_batch, as_rgb_images, resize_masks

log = logging.getLogger("salient_background")

ASPECT_TOLERANCE = 0.01

KEPT_COLOUR = (0.10, 0.85, 0.20)  # object in both masks: green
EXPANSION_COLOUR = (1.00, 0.10, 0.10)  # SAM's object outside m_i: red
LOST_COLOUR = (0.15, 0.35, 1.00)  # m_i not in SAM's object: blue
POINT_COLOUR = (1.00, 0.95, 0.10)  # positive prompt points: yellow


@dataclass
class ExpansionScore:
    """Scores of one generated image. All areas in pixels of the generated image."""

    width: int
    height: int
    object_px: int  # area(m_i)
    sam_px: int  # area(m_o)
    expansion_px: float  # area(m_o ∪ m_i) − area(m_i); NaN when m_i is empty
    expansion_image_fraction: float  # expansion_px / (width * height)
    expansion_relative: float  # expansion_px / object_px
    lost_px: float  # area(m_i \ m_o)
    iou: float  # |m_o ∩ m_i| / |m_o ∪ m_i|
    sam_score: float = math.nan  # SAM's predicted IoU of m_o

    def as_dict(self) -> dict:
        return asdict(self)


def expansion_from_masks(object_mask: torch.Tensor, sam_mask: torch.Tensor, *, sam_score: float = math.nan) -> ExpansionScore:
    """Scores of one pair of same-size masks ([H,W]; soft masks binarised at 0.5)."""
    if object_mask.shape != sam_mask.shape:
        raise InputError(f"object mask {tuple(object_mask.shape)} and SAM mask {tuple(sam_mask.shape)} differ in size")
    mi = (object_mask >= 0.5) if object_mask.dtype != torch.bool else object_mask
    mo = (sam_mask >= 0.5) if sam_mask.dtype != torch.bool else sam_mask
    h, w = int(mi.shape[-2]), int(mi.shape[-1])
    object_px, sam_px = int(mi.sum()), int(mo.sum())
    union = int((mi | mo).sum())
    inter = int((mi & mo).sum())
    if object_px == 0:
        log.warning("object expansion: the object mask is empty (no pixel >= 0.5); the score is undefined (NaN)")
        nan = math.nan
        return ExpansionScore(w, h, 0, sam_px, nan, nan, nan, nan, nan, sam_score)
    e = float(union - object_px)
    return ExpansionScore(
        width=w, height=h, object_px=object_px, sam_px=sam_px, expansion_px=e,
        expansion_image_fraction=e / (h * w), expansion_relative=e / object_px,
        lost_px=float(object_px - inter), iou=inter / union, sam_score=sam_score,
    )


def fit_mask_to_image(mask: torch.Tensor, height: int, width: int, *, what: str = "object_mask") -> torch.Tensor:
    """[H,W] soft mask -> [height,width] binary (bool) mask following the size policy in the module doc."""
    mh, mw = int(mask.shape[-2]), int(mask.shape[-1])
    if (mh, mw) != (height, width):
        ratio = (mw / mh) / (width / height)
        if abs(ratio - 1.0) > ASPECT_TOLERANCE:
            raise InputError(
                f"{what} is {mw}x{mh} but the generated image is {width}x{height}: different aspect ratios, so "
                "they do not show the same framing. Give the mask in the generated image's framing (letterbox or "
                "crop it the same way) or generate at the mask's aspect ratio."
            )
        log.warning("%s is %dx%d, the generated image %dx%d: mask resized to the image (same aspect ratio)",
                    what, mw, mh, width, height)
        mask = resize_masks(mask[None].float(), height, width, mode="bilinear")[0]
    return mask >= 0.5


def _batch_pairs(object_masks: torch.Tensor, batch: int) -> list[int]:
    if object_masks.shape[0] not in (1, batch):
        raise InputError(f"object_mask batch of {object_masks.shape[0]} does not match the image batch of {batch}: "
                         f"give 1 mask (used for every image) or {batch}")
    return [0] * batch if object_masks.shape[0] == 1 else list(range(batch))


@dataclass
class ExpansionRun:
    scores: list[ExpansionScore]
    object_masks: torch.Tensor  # bool [B,H,W], m_i at each image's size
    sam_masks: torch.Tensor  # bool [B,H,W], m_o
    points: list[np.ndarray]  # positive points used per image ([N,2] x, y)


def score_expansion(
    model: torch.nn.Module,
    images: torch.Tensor,
    object_masks: torch.Tensor,
    *,
    points: int = 8,
    seed: int = 0,
    negative: bool = False,
    box: bool = False,
    mask_choice: str = "auto",
    on_image_done: Callable[[], None] | None = None,
    prompt_cache: dict | None = None,
) -> ExpansionRun:
    """Object expansion of each generated image (``images`` [B,H,W,C]) against ``object_masks`` [1 or B,h,w].

    Prompts are computed once per distinct mask and image size (4 seeds of one mask share them); the image
    embedding once per image. ``prompt_cache`` (a dict the caller keeps) extends the sharing across calls that
    pass the same masks."""
    from ..networks.sam import SamImageSession, prompts_from_mask

    if points < 1:
        raise ValueError("points must be at least 1: the score is defined by SAM prompted with points inside m_i")
    images = as_rgb_images(images, what="generated image")
    masks = as_mask_batch(object_masks, what="object_mask").cpu()
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    pairing = _batch_pairs(masks, b)
    prompt_cache = {} if prompt_cache is None else prompt_cache
    scores, mis, mos, pts = [], [], [], []
    for i in range(b):
        key = (pairing[i], h, w, points, seed, negative, box)
        if key not in prompt_cache:
            mi = fit_mask_to_image(masks[pairing[i]], h, w)
            prompt_cache[key] = (mi, prompts_from_mask(mi, points, seed, negative=negative, box=box))
        mi, prompt = prompt_cache[key]
        if int((prompt.labels == 1).sum()) == 0:
            mo = torch.zeros(h, w, dtype=torch.bool)
            scores.append(expansion_from_masks(mi, mo))
        else:
            session = SamImageSession(model, images[i])
            pred = session.predict(prompt, mask_choice)
            session.close()
            mo = pred.mask
            scores.append(expansion_from_masks(mi, mo, sam_score=pred.score))
        mis.append(mi)
        mos.append(mo)
        pts.append(prompt.positive)
        if on_image_done is not None:
            on_image_done()
    return ExpansionRun(scores, torch.stack(mis), torch.stack(mos), pts)


# ---------------------------------------------------------------------------------------------- signed variant
def notebook_binarise(maps: torch.Tensor) -> torch.Tensor:
    """The notebook's rule on an 8-bit map: ``uint8(map * 255) > 127`` (truncation, as ``astype(np.uint8)``)."""
    return torch.floor(maps.float().clamp(0, 1) * 255.0) > 127


def signed_salient_change(object_masks: torch.Tensor, generated_maps: torch.Tensor) -> list[float]:
    """Reference notebook's ``obj_expansion``: ``mean(m_o > 127) − mean(m_i > 127)`` per image.

    ``object_masks`` [1 or B,h,w] (m_i, the salient mask of the original), ``generated_maps`` [B,H,W] (m_o, the
    salient model's map of each generated image). NaN (with a warning) when m_i is empty."""
    object_masks = as_mask_batch(object_masks, what="object_mask")
    generated_maps = as_mask_batch(generated_maps, what="salient map")
    pairing = _batch_pairs(object_masks, generated_maps.shape[0])
    out = []
    for i, j in enumerate(pairing):
        mi = notebook_binarise(object_masks[j])
        if not mi.any():
            log.warning("signed salient change: object mask %d is empty; the score is undefined (NaN)", j + 1)
            out.append(math.nan)
            continue
        out.append(float(notebook_binarise(generated_maps[i]).double().mean() - mi.double().mean()))
    return out


# ---------------------------------------------------------------------------------------------- presentation
def overlay(images: torch.Tensor, object_masks: torch.Tensor, sam_masks: torch.Tensor,
            points: Sequence[np.ndarray] | None = None, opacity: float = 0.55) -> torch.Tensor:
    """Picture of the score: the generated image, dimmed, with kept object (green), expansion (red) and lost
    object (blue) tinted, and the positive prompt points as yellow squares. [B,H,W,3] float."""
    images = as_rgb_images(images, what="generated image").cpu()
    mi, mo = object_masks.bool().cpu(), sam_masks.bool().cpu()
    out = images * 0.75
    for region, colour in ((mi & mo, KEPT_COLOUR), (mo & ~mi, EXPANSION_COLOUR), (mi & ~mo, LOST_COLOUR)):
        tint = torch.tensor(colour, dtype=out.dtype)
        weight = region[..., None].to(out.dtype) * opacity
        out = out * (1 - weight) + tint * weight
    if points is not None:
        h, w = out.shape[1], out.shape[2]
        r = max(1, round(max(h, w) / 256))
        for i, pts in enumerate(points):
            for x, y in np.asarray(pts).reshape(-1, 2).astype(int):
                out[i, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = torch.tensor(POINT_COLOUR)
    return out.clamp(0, 1)


def _fmt_pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f} %"


def summary_text(scores: Sequence[ExpansionScore]) -> str:
    """Readable per-image lines plus the batch mean (NaN scores excluded and counted)."""
    lines = []
    for k, s in enumerate(scores):
        if math.isnan(s.expansion_px):
            lines.append(f"image {k + 1}/{len(scores)}: object mask empty, expansion undefined")
            continue
        lines.append(
            f"image {k + 1}/{len(scores)}: expansion {int(s.expansion_px):,} px = {_fmt_pct(s.expansion_relative)} of "
            f"the object = {_fmt_pct(s.expansion_image_fraction)} of the image (object {s.object_px:,} px, SAM "
            f"{s.sam_px:,} px, lost {int(s.lost_px):,} px, IoU {s.iou:.3f})"
        )
    valid = [s for s in scores if not math.isnan(s.expansion_px)]
    if len(scores) > 1 and valid:
        mean_rel = sum(s.expansion_relative for s in valid) / len(valid)
        mean_px = sum(s.expansion_px for s in valid) / len(valid)
        lines.append(f"mean over {len(valid)} images: {mean_px:,.0f} px, {_fmt_pct(mean_rel)} of the object"
                     + (f" ({len(scores) - len(valid)} undefined)" if len(valid) < len(scores) else ""))
    return "\n".join(lines)


def describe_distribution(values: Sequence[float], threshold: float | None = None) -> dict:
    """Mean, median, percentiles (5, 10, 25, 75, 90, 95), min, max and, with ``threshold``, the share of values
    above it; NaN values are excluded and counted."""
    arr = np.asarray([v for v in values], dtype=np.float64)
    valid = arr[~np.isnan(arr)]
    out = {"count": int(valid.size), "undefined": int(arr.size - valid.size)}
    if valid.size == 0:
        out.update({k: None for k in ("mean", "median", "min", "max")})
        return out
    out.update(mean=float(valid.mean()), median=float(np.median(valid)), min=float(valid.min()), max=float(valid.max()))
    out["percentiles"] = {str(p): float(np.percentile(valid, p)) for p in (5, 10, 25, 75, 90, 95)}
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["share_above_threshold"] = float((valid > threshold).mean())
    return out
