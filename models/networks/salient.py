"""Salient-object masks with InSPyReNet (Swin-B), the network the paper uses through ``transparent-background``.

Public API (used by the nodes and the command line)::

    model = load_salient_model("ckpt_base.pth", mode="base", device="cuda", dtype=torch.float16)
    pred = model.predict(images)          # images: IMAGE [B,H,W,C] float 0..1
    pred.maps                             # [B,H,W] float32 in [0,1], 1 = salient object
    pred.raw_max, pred.empty              # per-image raw sigmoid maximum, "no salient object" flags

Behaviour pinned to transparent-background 1.2.12 (the paper's version), except where noted:

* RGB (greyscale repeated, alpha dropped), quantised to 8 bits like the PIL image the reference receives,
  resized with PIL's bilinear filter, /255, ImageNet mean/std.
* Resize policy ``"auto"`` = the 1.2.12 choice per mode: ``base`` resizes *dynamically* (short side capped at
  1280, both sides rounded to multiples of 32, aspect ratio kept), ``fast`` resizes *statically* to 384x384.
  ``"dynamic"`` / ``"static"`` force one policy (``"static"`` at base size is what 1.3.x does by default).
* Output: sigmoid, min-max normalised **per image** (the reference normalises over the whole batch, so its
  result for an image depends on the other images), bilinear back to the input size with
  ``align_corners=True``.
* An image whose raw sigmoid maximum is below ``threshold_empty`` (default :data:`EMPTY_THRESHOLD`) has no
  salient object: its map is all zeros (min-max normalising it would blow noise up into a fake object) and a
  warning is logged. The other images of the batch are unaffected.
* Sides under 16 px would round to 0 in the reference's dynamic rule (a crash there); here every side is at
  least 32.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint_io import describe_keys, load_state_dict, unwrap_state_dict
from ..errors import CheckpointError, InputError
from ..imaging.image_ops import as_rgb_images
from .inspyrenet import InSPyReNet
from ..model_files.model_registry import where_to_get
from ..precision import default_device, resolve_dtype

log = logging.getLogger("salient_background")

MODES: dict[str, int] = {"base": 1024, "fast": 384}
"""Mode -> base size (the checkpoint's training size, also the SICA pooling grid). ``ckpt_base.pth`` is the
base-mode checkpoint, ``ckpt_fast.pth`` the fast-mode one; both have the same keys, so the mode is chosen
explicitly, never guessed from the file name."""

RESIZE_POLICIES = ("auto", "dynamic", "static")
DYNAMIC_SHORT_SIDE_CAP = 1280
SIZE_MULTIPLE = 32
MIN_SIDE = 32

EMPTY_THRESHOLD = 0.1
"""An image counts as having no salient object when no pixel of the raw sigmoid map reaches this value
(no pixel is even 10 % likely to be salient). 0 disables the check."""

DEFAULT_CHUNK_PIXELS = 4_200_000
"""Network-input pixels processed per forward pass when ``batch_size`` is not given (4 images at 1024x1024;
bounds peak memory for large batches)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# where the official files come from: the model registry, the one source of that hint
OFFICIAL_FILES_HINT = "Use ckpt_base.pth (mode 'base') or ckpt_fast.pth (mode 'fast'). " + where_to_get("inspyrenet")

# Keys derived from the architecture rather than learned: a file may leave them out.
_DERIVED_KEY_SUFFIXES = (".relative_position_index", ".num_batches_tracked")


@dataclass(frozen=True)
class SalientModelConfig:
    mode: str = "base"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown salient model mode {self.mode!r}; choose one of {sorted(MODES)}")

    @property
    def base_size(self) -> int:
        return MODES[self.mode]


@dataclass
class SalientPrediction:
    maps: torch.Tensor  # [B,H,W] float32 in [0,1] at the input resolution; 1 = salient object
    raw_max: torch.Tensor  # [B] float32: maximum of the raw sigmoid map, before normalisation
    empty: list[bool] = field(default_factory=list)  # True where no salient object was found (map all 0)


# ---------------------------------------------------------------------------------------------- sizes
def _round_to_multiple(value: float) -> int:
    # Python's round() (half to even) as in the reference, then at least one multiple.
    return max(MIN_SIDE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def dynamic_input_size(height: int, width: int, cap: int = DYNAMIC_SHORT_SIDE_CAP) -> tuple[int, int]:
    """(height, width) the network sees under the 1.2.12 dynamic rule: if the short side exceeds ``cap`` the
    image is scaled so that it equals ``cap``; then both sides are rounded to multiples of 32."""
    w, h = float(width), float(height)
    if w >= h and h > cap:
        w, h = w / (h / cap), float(cap)
    elif h > w and w > cap:
        w, h = float(cap), h / (w / cap)
    return _round_to_multiple(h), _round_to_multiple(w)


def network_input_size(height: int, width: int, mode: str, resize: str = "auto") -> tuple[int, int]:
    """(height, width) of the network input for an image of ``height`` x ``width`` under a resize policy."""
    base = SalientModelConfig(mode).base_size
    if resize not in RESIZE_POLICIES:
        raise InputError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    if resize == "auto":
        resize = "dynamic" if mode == "base" else "static"
    if resize == "static":
        return base, base
    return dynamic_input_size(height, width)


def preprocess(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RGB IMAGE [B,H,W,3] float 0..1 -> normalised network input [B,3,h,w] float32 on the CPU.

    Each image is rounded to 8 bits and resized with PIL's bilinear filter, exactly like the PIL image the
    reference transforms (PIL's antialiased filter and other bilinear resizers differ by up to 0.3 in the
    final map)."""
    h, w = size
    out = torch.empty((images.shape[0], 3, h, w), dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i, image in enumerate(images):
        array = np.clip(image.detach().float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if array.shape[:2] != (h, w):
            array = np.asarray(Image.fromarray(array, mode="RGB").resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)
        out[i] = (x / 255.0 - mean) / std
    return out


# ---------------------------------------------------------------------------------------------- checkpoints
def _strip_common_prefix(state: dict, expected: set[str]) -> dict:
    """Remove a wrapper prefix ('model.', 'net.', ...) shared by every key when that reveals the layout."""
    if not state or set(state) & expected:
        return state
    first = next(iter(state))
    if "." not in first:
        return state
    prefix = first.split(".", 1)[0] + "."
    if all(k.startswith(prefix) for k in state):
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        if set(stripped) & expected:
            return stripped
    return state


def check_salient_state_dict(state: Mapping, expected: Mapping[str, torch.Tensor], source: str) -> dict:
    """Validate a state dict against the network's, with errors that name the problem.

    Returns the dict to load (derived buffers the file leaves out are filled from ``expected``).
    """
    state = _strip_common_prefix(dict(state), set(expected))
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source} is not a plain state dict of tensors (e.g. {describe_keys(not_tensors)})")
    expected_keys = set(expected)
    missing = expected_keys - set(state)
    unexpected = set(state) - expected_keys
    if any(k.startswith(("backbone.layer1.", "backbone.conv1.")) for k in state):
        raise CheckpointError(
            f"{source} looks like the research repository's InSPyReNet with a Res2Net50 backbone; only the Swin-B "
            f"model that transparent-background ships is supported. {OFFICIAL_FILES_HINT}"
        )
    found = len(expected_keys) - len(missing)
    if found < len(expected_keys) // 2:
        raise CheckpointError(
            f"{source} is not an InSPyReNet (Swin-B) checkpoint: it holds {len(state)} tensors and only {found} of "
            f"the {len(expected_keys)} expected names. Expected names such as {describe_keys(missing or expected_keys)}; "
            f"the file has names such as {describe_keys(unexpected or state)}. {OFFICIAL_FILES_HINT}"
        )
    really_missing = [k for k in missing if not k.endswith(_DERIVED_KEY_SUFFIXES)]
    if really_missing or unexpected:
        parts = []
        if really_missing:
            parts.append(f"missing {len(really_missing)} tensors ({describe_keys(really_missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors ({describe_keys(unexpected)})")
        raise CheckpointError(
            f"{source} is an incomplete or different InSPyReNet checkpoint: {'; '.join(parts)}. {OFFICIAL_FILES_HINT}"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected"
        for k in sorted(expected_keys & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if wrong:
        shown = "; ".join(wrong[:4]) + (f"; ... ({len(wrong)} in all)" if len(wrong) > 4 else "")
        raise CheckpointError(
            f"{source} has the InSPyReNet names but wrong tensor shapes (a different backbone or width?): {shown}. "
            f"{OFFICIAL_FILES_HINT}"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} contains NaN or infinite weights in {describe_keys(bad)}: the file is corrupt")
    for k in missing:  # derived buffers only, by now
        state[k] = expected[k]
    return state


@functools.lru_cache(maxsize=2)
def expected_layout(base_size: int) -> dict[str, torch.Tensor]:
    """The network's state dict as empty-shaped placeholders (meta tensors) plus the true values of the
    derived buffers: what :func:`check_salient_state_dict` compares a file against. Cached per base size."""
    layout = {}
    for key, value in InSPyReNet(base_size=base_size).state_dict().items():
        layout[key] = value.clone() if key.endswith(_DERIVED_KEY_SUFFIXES) else torch.empty(value.shape, device="meta")
    return layout


def load_salient_model(path: str | os.PathLike, mode: str = "base", device=None, dtype=torch.float32) -> "SalientSegmenter":
    """Load an InSPyReNet checkpoint (official ``.pth`` read with ``weights_only=True``, or ``.safetensors``).

    ``mode`` ("base" = 1024 for ``ckpt_base.pth``, "fast" = 384 for ``ckpt_fast.pth``) sets the base size the
    network is built with. Raises :class:`CheckpointError` naming the problem for missing, truncated,
    unrelated or mismatched files.
    """
    config = SalientModelConfig(mode)
    source = f"InSPyReNet checkpoint {os.fspath(path)!r}"
    state = unwrap_state_dict(load_state_dict(path, what="InSPyReNet checkpoint"))
    state = check_salient_state_dict(state, expected_layout(config.base_size), source)
    network = InSPyReNet(base_size=config.base_size)
    network.load_state_dict(state, strict=True)
    network.eval().requires_grad_(False)
    segmenter = SalientSegmenter(network, mode=mode)
    device = torch.device(device) if device is not None else default_device()
    return segmenter.to(device, dtype)


# ---------------------------------------------------------------------------------------------- the model
class SalientSegmenter:
    """An InSPyReNet network plus its pre/post-processing. ``network`` is the ``torch.nn.Module`` (what
    model-management wrappers move between devices); ``device``/``dtype`` are read from it."""

    def __init__(self, network: InSPyReNet, mode: str = "base"):
        config = SalientModelConfig(mode)
        if tuple(network.base_size) != (config.base_size, config.base_size):
            raise ValueError(f"network built for base size {network.base_size} but mode {mode!r} needs {config.base_size}")
        self.network = network
        self.mode = mode
        self.base_size = config.base_size

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def to(self, device=None, dtype=None) -> "SalientSegmenter":
        device = torch.device(device) if device is not None else self.device
        dtype = resolve_dtype(dtype if dtype is not None else self.dtype, device)
        self.network.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return f"SalientSegmenter(mode={self.mode!r}, base_size={self.base_size}, device={self.device}, dtype={self.dtype})"

    def input_size(self, height: int, width: int, resize: str = "auto") -> tuple[int, int]:
        return network_input_size(height, width, self.mode, resize)

    @torch.inference_mode()
    def predict(
        self,
        images: torch.Tensor,
        resize: str = "auto",
        threshold_empty: float = EMPTY_THRESHOLD,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SalientPrediction:
        """Salient-object maps for an IMAGE batch [B,H,W,C] (or [H,W,C]) in 0..1, C = 1, 3 or 4.

        ``batch_size`` images go through the network at once (None or 0: as many as fit in
        :data:`DEFAULT_CHUNK_PIXELS`); ``progress(done, total)`` is called after each chunk (it may raise to
        interrupt). Maps come back on the device the images came from.
        """
        images = as_rgb_images(images)
        if resize == "dynamic" and self.mode == "fast":
            log.warning("dynamic resizing with the fast (384) model degrades the masks; the fast model expects 'static'")
        b, height, width = images.shape[0], images.shape[1], images.shape[2]
        size = self.input_size(height, width, resize)
        if not batch_size or batch_size < 1:  # None or 0: automatic
            batch_size = max(1, DEFAULT_CHUNK_PIXELS // (size[0] * size[1]))
        out_device = images.device
        device, dtype = self.device, self.dtype
        maps = torch.empty((b, height, width), dtype=torch.float32, device=out_device)
        raw_max = torch.empty(b, dtype=torch.float32)
        for start in range(0, b, batch_size):
            chunk = images[start:start + batch_size]
            x = preprocess(chunk, size).to(device=device, dtype=dtype)
            prob = torch.sigmoid(self.network(x).float())
            flat = prob.flatten(1)
            hi = flat.amax(dim=1)
            lo = flat.amin(dim=1)
            norm = (prob - lo.view(-1, 1, 1, 1)) / (hi - lo + 1e-8).view(-1, 1, 1, 1)
            norm = F.interpolate(norm, size=(height, width), mode="bilinear", align_corners=True)[:, 0]
            maps[start:start + len(chunk)] = norm.to(out_device)
            raw_max[start:start + len(chunk)] = hi.cpu()
            if progress is not None:
                progress(min(start + batch_size, b), b)
        empty = [bool(v < threshold_empty) for v in raw_max.tolist()]
        for i, is_empty in enumerate(empty):
            if is_empty:
                maps[i].zero_()
                log.warning(
                    "image %d of %d: no salient object found (raw saliency maximum %.4f < %.4f); its mask is empty",
                    i + 1, b, raw_max[i].item(), threshold_empty,
                )
        return SalientPrediction(maps=maps, raw_max=raw_max, empty=empty)
