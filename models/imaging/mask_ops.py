"""Mask operations on batches of masks [B,H,W] in 0..1 (soft or binary), device-agnostic.

Morphology uses an exact disk (Euclidean radius), not a square, so a grown circle stays a circle.
Connected components use run-length union-find in NumPy (no SciPy/OpenCV dependency); they work on the
binarised mask (>= 0.5).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .image_ops import as_mask_batch


def threshold(masks: torch.Tensor, value: float = 0.5) -> torch.Tensor:
    """Binary mask: 1 where ``mask >= value``."""
    return (masks >= value).to(masks.dtype)


def invert(masks: torch.Tensor) -> torch.Tensor:
    return 1.0 - masks


def _shift_rows(x: torch.Tensor, dy: int, fill: float) -> torch.Tensor:
    """out[..., y, :] = x[..., y + dy, :], ``fill`` where y + dy is outside the image."""
    if dy == 0:
        return x
    h = x.shape[-2]
    if abs(dy) >= h:
        return torch.full_like(x, fill)
    pad = (0, 0, 0, dy) if dy > 0 else (0, 0, -dy, 0)
    padded = F.pad(x, pad, value=fill)
    return padded[..., dy:dy + h, :] if dy > 0 else padded[..., :h, :]


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-scale dilation (max filter) with a disk of ``radius`` pixels: max over all pixels whose centre is
    within ``radius`` of the output pixel. Cost O(radius * H * W): one horizontal max-pool per distinct row
    half-width, then a row shift per disk row."""
    radius = int(radius)
    if radius <= 0:
        return masks
    x = masks[:, None]
    pooled_by_halfwidth: dict[int, torch.Tensor] = {}
    out = None
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in pooled_by_halfwidth:
            pooled_by_halfwidth[half] = F.max_pool2d(x, kernel_size=(1, 2 * half + 1), stride=1, padding=(0, half)) if half else x
        row = _shift_rows(pooled_by_halfwidth[half], dy, 0.0)
        out = row if out is None else torch.maximum(out, row)
    return out[:, 0]


def erode(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-scale erosion with a disk; outside the image counts as object (so a mask touching the border is not
    eaten from the border, as in ComfyUI's GrowMask)."""
    return 1.0 - dilate(1.0 - masks, radius)


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow (pixels > 0) or shrink (pixels < 0) the mask by ``|pixels|`` with a disk."""
    return dilate(masks, pixels) if pixels >= 0 else erode(masks, -pixels)


def gaussian_blur(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B,H,W] with replicate padding (edges do not fade to 0)."""
    if sigma <= 0:
        return masks
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=masks.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(masks.dtype)
    x = masks[:, None]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)


def feather(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the edge over about ``pixels`` on each side (Gaussian, sigma = pixels / 3)."""
    return gaussian_blur(masks, pixels / 3.0) if pixels > 0 else masks


# ---------------------------------------------------------------------------------------------- components
def label_components(binary: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of a 2-D boolean array.

    Returns ``(labels, areas)``: ``labels`` int32 [H,W] with 0 = background and 1..N the components (numbered in
    raster order of their first pixel), ``areas[k]`` the pixel count of component k (``areas[0]`` = 0).
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    binary = np.asarray(binary, dtype=bool)
    h, w = binary.shape
    labels = np.zeros((h, w), dtype=np.int32)
    if not binary.any():
        return labels, np.zeros(1, dtype=np.int64)
    # runs of True per row: start (inclusive) and end (exclusive)
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = binary
    diff = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(diff == 1)
    _, run_ends = np.nonzero(diff == -1)
    n = run_rows.size
    stride = w + 2  # keeps rows apart in the flattened keys below
    start_keys = run_rows.astype(np.int64) * stride + run_starts
    end_keys = run_rows.astype(np.int64) * stride + run_ends
    reach = 1 if connectivity == 8 else 0
    # for each run b (row r+1) the runs a of row r that touch it form a contiguous index range [lo, hi)
    base = (run_rows.astype(np.int64) - 1) * stride
    lo = np.searchsorted(end_keys, base + run_starts - reach, side="right")
    hi = np.searchsorted(start_keys, base + run_ends + reach, side="left")
    counts = np.maximum(hi - lo, 0)
    b_idx = np.repeat(np.arange(n), counts)
    a_idx = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    # union-find by min-label propagation with pointer jumping
    parent = np.arange(n)
    while True:
        la, lb = parent[a_idx], parent[b_idx]
        low = np.minimum(la, lb)
        before = parent.copy()
        np.minimum.at(parent, la, low)
        np.minimum.at(parent, lb, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    roots, run_labels = np.unique(parent, return_inverse=True)
    run_labels = run_labels.astype(np.int32) + 1
    lengths = run_ends - run_starts
    flat = np.repeat(run_rows.astype(np.int64) * w + run_starts, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    labels.reshape(-1)[flat] = np.repeat(run_labels, lengths)
    areas = np.bincount(run_labels, weights=lengths, minlength=roots.size + 1).astype(np.int64)
    return labels, areas


def fill_holes(masks: torch.Tensor) -> torch.Tensor:
    """Fill enclosed holes: background regions (4-connected) that do not touch the image border become object
    (value 1). Soft values elsewhere are kept."""
    out = masks.clone()
    for i, mask in enumerate(masks):
        background = (mask < 0.5).cpu().numpy()
        labels, _ = label_components(background, connectivity=4)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        holes = (labels > 0) & ~np.isin(labels, border)
        if holes.any():
            out[i][torch.from_numpy(holes).to(mask.device)] = 1.0
    return out


def keep_largest_components(masks: torch.Tensor, count: int = 1, connectivity: int = 8) -> torch.Tensor:
    """Keep the ``count`` largest connected components of each mask (binarised at 0.5) and drop the rest.

    Soft edges survive: the soft mask is kept within 2 px of a kept component (its anti-aliased rim lies just
    outside the binarised region)."""
    if count <= 0:
        return masks
    out = torch.zeros_like(masks)
    for i, mask in enumerate(masks):
        labels, areas = label_components((mask >= 0.5).cpu().numpy(), connectivity=connectivity)
        if areas.size <= 1:
            continue
        order = np.argsort(-areas[1:], kind="stable")[:count] + 1
        kept = torch.from_numpy(np.isin(labels, order)).to(mask.device, mask.dtype)
        out[i] = mask * dilate(kept[None], 2)[0]
    return out


def area(masks: torch.Tensor, threshold_value: float = 0.5) -> torch.Tensor:
    """Pixel count of the binarised mask, per batch item (float64 for exact sums)."""
    return (masks >= threshold_value).flatten(1).sum(dim=1).to(torch.float64)


def refine(masks: torch.Tensor, *, threshold_at: float = 0.0, fill: bool = False, keep_largest: int = 0,
           grow_by: int = 0, feather_by: int = 0, invert_result: bool = False) -> torch.Tensor:
    """The Mask Refine node's steps, in this order: threshold -> fill holes -> keep the largest components ->
    grow/shrink -> feather -> invert. ``threshold_at`` 0 keeps the mask soft."""
    masks = as_mask_batch(masks)
    if threshold_at > 0:
        masks = threshold(masks, threshold_at)
    if fill:
        masks = fill_holes(masks)
    if keep_largest > 0:
        masks = keep_largest_components(masks, keep_largest)
    if grow_by:
        masks = grow(masks, grow_by)
    if feather_by:
        masks = feather(masks, feather_by)
    if invert_result:
        masks = invert(masks)
    return masks
