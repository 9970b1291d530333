"""Paste the original object back over a generated image, with an eroded, feathered seam."""
from __future__ import annotations

import torch

from . import mask_ops
from ..errors import InputError


def paste_alpha(object_mask: torch.Tensor, erode: int = 2, feather: int = 4) -> torch.Tensor:
    """The blending weight of the original: ``object_mask`` [B,H,W] binarised at 0.5, shrunk by ``erode`` pixels
    (so the seam falls inside the object and no old background comes back), then softened over ``feather`` pixels."""
    if erode < 0 or feather < 0:
        raise InputError(f"erode and feather must be >= 0, got {erode} and {feather}")
    alpha = mask_ops.threshold(object_mask.float())
    if erode:
        alpha = mask_ops.erode(alpha, erode)
    if feather:
        alpha = mask_ops.feather(alpha, feather)
    return alpha.clamp(0, 1)


def paste_object_back(
    generated: torch.Tensor, original: torch.Tensor, object_mask: torch.Tensor, erode: int = 2, feather: int = 4
) -> torch.Tensor:
    """``generated * (1 - a) + original * a`` with ``a = paste_alpha(object_mask)``; IMAGE [B,H,W,C], MASK [B,H,W].

    ``original`` and ``object_mask`` may have a batch of 1 (broadcast). All must have the same height and width.
    """
    if generated.ndim != 4 or original.ndim != 4:
        raise InputError(f"expected IMAGE batches [B,H,W,C], got {tuple(generated.shape)} and {tuple(original.shape)}")
    if object_mask.ndim == 2:
        object_mask = object_mask[None]
    sizes = {"generated image": tuple(generated.shape[1:3]), "original image": tuple(original.shape[1:3]),
             "object_mask": tuple(object_mask.shape[1:3])}
    if len(set(sizes.values())) != 1:
        raise InputError(
            "sizes differ: " + ", ".join(f"{k} {w}x{h}" for k, (h, w) in sizes.items())
            + ". Map the generated image back first (Restore Frame) so all three are at the original size."
        )
    b = generated.shape[0]
    for name, t in (("original image", original), ("object_mask", object_mask)):
        if t.shape[0] not in (1, b):
            raise InputError(f"{name} batch {t.shape[0]} does not match the generated batch {b} (give 1 or {b})")
    alpha = paste_alpha(object_mask.to(generated.device), erode, feather)[..., None]
    original = original.to(device=generated.device, dtype=generated.dtype)[..., : generated.shape[-1]]
    return (generated * (1 - alpha) + original * alpha).clamp(0, 1)
