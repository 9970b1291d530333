"""Synthetic images and masks with known geometry (areas computable by hand)."""
from __future__ import annotations

import numpy as np
import torch


def disk_mask(height: int, width: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    """[H,W] float mask, 1 inside the disk (pixel centres within ``radius`` of (cy, cx))."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).float()


def rect_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """[H,W] float mask, 1 on rows top..bottom-1 and columns left..right-1 (area (bottom-top)*(right-left))."""
    mask = torch.zeros(height, width)
    mask[top:bottom, left:right] = 1.0
    return mask


def textured_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[H,W,3] float image in [0,1]: smooth random texture (what a photo background looks like to a net)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    t = torch.from_numpy(small).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)


def object_on_background(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disk (the 'object') on a textured background: (image [H,W,3], object_mask [H,W])."""
    image = textured_image(height, width, seed) * 0.5
    mask = disk_mask(height, width, height / 2, width / 2, min(height, width) / 4)
    image = image * (1 - mask[..., None]) + mask[..., None] * torch.tensor([0.9, 0.2, 0.1])
    return image, mask
