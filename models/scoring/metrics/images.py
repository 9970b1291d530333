"""Image batches for the metric networks: ComfyUI layout in, grouped by size, as 8-bit values."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ...imaging.image_ops import as_rgb_images


def as_image_list(images, *, what: str = "image") -> list[torch.Tensor]:
    """A [B,H,W,C] batch or a sequence of [H,W,C] / [1,H,W,C] images (sizes may differ) -> list of [H,W,3]
    float32 in 0..1."""
    if isinstance(images, torch.Tensor):
        return list(as_rgb_images(images, what=what))
    out = []
    for i, image in enumerate(images):
        batch = as_rgb_images(image, what=f"{what} {i}")
        out.extend(batch)
    return out


def same_size_batches(images: Sequence[torch.Tensor], batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start index, [b,H,W,3])`` runs of consecutive same-size images, at most ``batch_size`` long."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
            end += 1
        yield start, torch.stack(list(images[start:end]))
        start = end


def to_uint8_nchw(batch: torch.Tensor) -> torch.Tensor:
    """[B,H,W,3] float 0..1 -> [B,3,H,W] uint8, rounded as an 8-bit PNG stores it (so a file read back gives the
    same values)."""
    return (batch.clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8).permute(0, 3, 1, 2).contiguous()
