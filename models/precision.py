"""Device and dtype choice shared by every network the pack runs."""
from __future__ import annotations

import torch

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA and fp32 elsewhere (CPU half precision is slow or unsupported for many ops)."""
    if precision == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}") from None
