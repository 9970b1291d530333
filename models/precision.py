"""Device and dtype choice shared by every network the pack runs."""
from __future__ import annotations

import logging

import torch

from .errors import InputError

log = logging.getLogger("salient_background")

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(precision, device) -> torch.dtype:
    """The dtype to run in on ``device`` for ``precision`` ("auto", "fp32"/"fp16"/"bf16", a torch dtype or None).

    "auto" (and None) is fp16 on CUDA and fp32 elsewhere. Fallbacks, each logged: fp16 on the CPU runs in fp32
    (slow and poorly supported there); bf16 on a GPU without bf16 support runs in fp16.
    """
    device = torch.device(device)
    if precision is None or precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(precision, str):
        if precision.lower() not in _DTYPE_NAMES:
            raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        precision = _DTYPE_NAMES[precision.lower()]
    if precision not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"unsupported dtype {precision}: choose float32, float16 or bfloat16")
    if device.type == "cpu" and precision == torch.float16:
        log.warning("float16 is not supported well on the CPU; running in float32 instead")
        return torch.float32
    if device.type == "cuda" and precision == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bfloat16 support; running in float16 instead")
        return torch.float16
    return precision


def parse_device(name) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1", "mps", a torch.device or None = the default) as a usable device.

    A name torch does not know, or a device this machine does not have, is an :class:`InputError` that says what
    is available, raised before any model is loaded.
    """
    if name is None or name == "":
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps ({_available_devices()})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {name!r} asked for, but this machine has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r} does not exist: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {name!r} asked for, but Apple's MPS is not available here ({_available_devices()})")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or mps ({_available_devices()})")
    return device


def _available_devices() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return "available here: " + ", ".join(names)
