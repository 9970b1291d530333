"""The Mask Refine node on masks with known geometry (runs without ComfyUI)."""
from __future__ import annotations

import torch

from salient_background.models.imaging import mask_ops
from salient_background.nodes.mask_nodes import MaskRefine
from sb_testkit.images import disk_mask, rect_mask


def brute_force_grow(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Independent dilation: a pixel is set if any set pixel lies within ``radius`` (Euclidean)."""
    h, w = mask.shape
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).float()
    on = grid[mask.reshape(-1) > 0]
    return (torch.cdist(grid, on).min(dim=1).values <= radius + 1e-6).float().reshape(h, w)


def test_refine_fills_holes_keeps_largest_then_grows_and_inverts_a_batch():
    ring = disk_mask(64, 64, 32, 32, 20) - disk_mask(64, 64, 32, 32, 10)
    speck = rect_mask(64, 64, 0, 0, 3, 3)
    masks = torch.stack([ring + speck, rect_mask(64, 64, 10, 10, 30, 30)])
    (out,) = MaskRefine().refine(masks, threshold=0.5, grow=2, feather=0, fill_holes=True, keep_largest=1, invert=True)
    assert out.shape == (2, 64, 64)
    expected0 = 1 - brute_force_grow(disk_mask(64, 64, 32, 32, 20), 2)  # holes filled, speck dropped, grown, inverted
    assert torch.equal(out[0], expected0)
    assert mask_ops.area(1 - out[1:2]).item() == 20 * 20 + 4 * 20 * 2 + 4 * 1  # corner: only (1,1) lies within r=2


def test_refine_defaults_leave_a_soft_mask_unchanged():
    soft = torch.rand(2, 16, 16)
    (out,) = MaskRefine().refine(soft)
    assert torch.equal(out, soft)


def test_refine_accepts_a_single_2d_mask():
    (out,) = MaskRefine().refine(rect_mask(8, 8, 2, 2, 6, 6), grow=-1)
    assert out.shape == (1, 8, 8) and mask_ops.area(out).item() == 4
