"""Random InSPyReNet (Swin-B) checkpoints in the official ``transparent-background`` layout, and broken ones.

The recipe is deterministic for a seed (torch's CPU generator; BatchNorm statistics from one forward pass
over synthetic images made with integer arithmetic), so CI regenerates the exact weights the parity goldens
were made with. Bump ``RECIPE_VERSION`` whenever the recipe changes (the goldens record it).

Why calibrate: with random weights and default BatchNorm statistics the activations blow up, the SICA
attention saturates and the map is constant. One train-mode pass sets every BatchNorm's running statistics
to those of the synthetic batch, so the network produces a structured, non-constant map.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

RECIPE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ synthetic images
def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A uint8 [H,W,3] 'photo' made with integer operations only (bit-exact everywhere): a smooth random
    background (PIL bilinear upscaling of a coarse random grid) with a bright ellipse and a dark rectangle."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    canvas = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    cx, cy = int(rng.integers(width // 3, 2 * width // 3 + 1)), int(rng.integers(height // 3, 2 * height // 3 + 1))
    rx, ry = max(1, width // 5), max(1, height // 4)
    colour = tuple(int(c) for c in rng.integers(180, 256, size=3))
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
    draw.rectangle((width // 10, height // 10, width // 10 + max(1, width // 8), height // 10 + max(1, height // 6)), fill=(20, 30, 40))
    return np.asarray(canvas, dtype=np.uint8).copy()


def _normalised_batch(arrays) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays)).float().div(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------ random weights
def _fill_random(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every learned tensor (fan-in scaled weights, perturbed norms, non-trivial gammas and
    thresholds). Index buffers keep their true values; BatchNorm statistics are set by calibration."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":  # axial self-attention residual scale (trained nets: O(1))
                p.copy_(torch.rand(p.shape, generator=generator) * 0.5 + 0.5)
            elif leaf in ("threshold", "lthreshold"):  # SICA thresholds around 0.5
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=generator))
            elif leaf == "relative_position_bias_table":
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
            elif p.ndim >= 2:  # conv / linear weights: unit gain
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif leaf == "weight":  # LayerNorm / BatchNorm scale
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


CONTEXT_VAR_INFLATION = 100.0


def _calibrate_batchnorm(net: torch.nn.Module, seed: int, size: int, count: int) -> None:
    """One train-mode pass over ``count`` synthetic ``size``x``size`` photos sets every BatchNorm's running
    statistics (cumulative average = exactly this batch's statistics).

    SICA's key/value BatchNorms see only ``count`` x 3..5 pooled context vectors, so their variance estimate
    is tiny next to how much those vectors move between images; their variance is inflated so that unseen
    images still give graded (not saturated) maps.
    """
    images = _normalised_batch([synthetic_photo(size, size, seed=seed * 1000 + i) for i in range(count)])
    bns = [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for _, bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    with torch.no_grad():
        net(images)
    net.eval()
    for name, bn in bns:
        bn.momentum = 0.1
        if name.startswith("attention") and (".conv_key." in name or ".conv_value." in name):
            bn.running_var.mul_(CONTEXT_VAR_INFLATION)


def random_inspyrenet_state_dict(seed: int = 0, base_size: int = 384, *, calibrate: bool = True,
                                 calib_size: int = 128, calib_count: int = 6) -> dict[str, torch.Tensor]:
    """Flat state dict in the official layout (1,625 keys) with seeded random weights.

    ``base_size`` must be the size the checkpoint will be run at (the SICA pooling grid changes the scale
    of its context vectors, so BatchNorm statistics calibrated at 384 do not fit 1024).
    """
    from salient_background.models.networks.inspyrenet import InSPyReNet

    torch.manual_seed(seed)  # construction-time init is overwritten, but keep it reproducible
    net = InSPyReNet(base_size=base_size)
    _fill_random(net, torch.Generator().manual_seed(seed))
    if calibrate:
        _calibrate_batchnorm(net, seed, calib_size, calib_count)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------------------ on-disk formats
def save_pth(state: dict, path: str | os.PathLike) -> str:
    """The official format: ``torch.save`` of the flat dict."""
    torch.save(state, os.fspath(path))
    return os.fspath(path)


def save_safetensors(state: dict, path: str | os.PathLike) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, os.fspath(path))
    return os.fspath(path)


def save_truncated(src: str | os.PathLike, dst: str | os.PathLike, fraction: float = 0.5) -> str:
    """Copy of ``src`` cut after ``fraction`` of its bytes (an interrupted download)."""
    data = open(src, "rb").read()
    with open(dst, "wb") as fh:
        fh.write(data[: int(len(data) * fraction)])
    return os.fspath(dst)


def non_inspyrenet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of an unrelated small network (what a user might pick from the wrong folder)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return dict(net.state_dict())


def res2net_variant_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The research repository's Res2Net50 InSPyReNet layout, imitated: a ``backbone.conv1/layerN`` backbone
    and context modules whose input widths are 64/256/512/1024/2048 (shape mismatches, not just names)."""
    from salient_background.models.networks.inspyrenet.modules import ContextModule

    out = {k: v for k, v in state.items() if not k.startswith(("backbone.", "context"))}
    out["backbone.conv1.0.weight"] = torch.zeros(32, 3, 3, 3)
    out["backbone.layer1.0.conv1.weight"] = torch.zeros(104, 64, 1, 1)
    for i, cin in enumerate((64, 256, 512, 1024, 2048), start=1):
        for k, v in ContextModule(cin, 64).state_dict().items():
            out[f"context{i}.{k}"] = v
    return out


_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def cached_random_state_dict(seed: int = 0, base_size: int = 384) -> dict[str, torch.Tensor]:
    """:func:`random_inspyrenet_state_dict`, built once per process (shared by test modules). Do not mutate
    the returned tensors; copy the dict before changing keys."""
    key = (seed, base_size, RECIPE_VERSION)
    if key not in _CACHE:
        _CACHE[key] = random_inspyrenet_state_dict(seed, base_size)
    return _CACHE[key]


def write_random_checkpoint(path: str | os.PathLike, mode: str = "fast", seed: int = 0) -> str:
    """Write a random checkpoint in the official layout for ``mode`` ("base" 1024 / "fast" 384), as ``.pth``
    (the official flat dict) or ``.safetensors`` according to the suffix. Weights are cached per process."""
    base_size = {"base": 1024, "fast": 384}[mode]
    state = cached_random_state_dict(seed, base_size)
    if os.fspath(path).lower().endswith((".safetensors", ".sft")):
        return save_safetensors(state, path)
    return save_pth(state, path)
