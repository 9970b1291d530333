"""Random Segment Anything checkpoints in Meta's official file layout (a plain ``torch.save`` of the ``Sam``
state dict, the layout of ``sam_vit_b_01ec64.pth``).

* ``official_state_shapes(variant)``: the full-size state dict of vit_b/l/h built on the ``meta`` device (no
  memory, no file) -- for variant detection on real shapes.
* ``save_random_sam(path, "vit_b")``: the full-size vit_b (91 M parameters, ~375 MB, a few seconds).
* ``save_random_sam(path, "tiny")``: same key layout and the same 1024-pixel input, but a 2-block, 32-wide
  encoder with 64-pixel patches (16x16 embedding grid): runs in milliseconds, for logic tests.

Every tensor is random (also ``pos_embed`` and the relative-position tables, which SAM initialises to zero).
"""
from __future__ import annotations

import os

import torch

from .files import process_temporary_folder

TINY = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, img_size=1024, patch_size=64)


def _architecture(variant: str):
    from salient_background.models.networks.sam import SamArchitecture, official_architecture

    if variant == "tiny":
        return SamArchitecture(**TINY)
    return official_architecture(variant)


def official_state_shapes(variant: str) -> dict[str, torch.Tensor]:
    """State dict of the official ``variant`` with ``meta`` tensors (built by segment-anything itself)."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        model = sam_model_registry[variant]()
    return model.state_dict()


def random_sam(variant: str = "tiny", seed: int = 0) -> torch.nn.Module:
    from salient_background.models.networks.sam import build_sam

    torch.manual_seed(seed)
    model = build_sam(_architecture(variant))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("pos_embed") or ".rel_pos_" in name:
                tensor.normal_(0.0, 0.02)
    return model.eval()


def save_random_sam(path: str | os.PathLike, variant: str = "tiny", seed: int = 0) -> str:
    """Write a random SAM checkpoint in Meta's layout; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(random_sam(variant, seed).state_dict(), path)
    return path


_CACHE_DIR: str | None = None


def cached_checkpoint(variant: str = "tiny", seed: int = 0) -> str:
    """Path of a random checkpoint written once per test process (a session-wide cache for every test file)."""
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = process_temporary_folder("sb_sam_")
    path = os.path.join(_CACHE_DIR, f"sam_{variant}_{seed}.pth")
    if not os.path.isfile(path):
        save_random_sam(path, variant, seed)
    return path


class EncoderCounter:
    """Counts forward passes of a SAM image encoder (a forward hook, independent of the code under test)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        self._handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
