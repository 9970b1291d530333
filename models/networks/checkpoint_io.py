"""Reading weight files: ``.safetensors`` preferred, pickles only with ``weights_only=True``."""
from __future__ import annotations

import json
import os
from typing import Mapping

import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


def load_state_dict(path: str | os.PathLike, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict on the CPU.

    ``what`` names the expected model in error messages ("InSPyReNet checkpoint", ...).
    Raises :class:`CheckpointError` for a missing, truncated, corrupt or non-tensor file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path!r} is not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{what} {path!r} is empty (0 bytes): the download or copy was interrupted; fetch it again")
    lower = path.lower()
    try:
        if lower.endswith(SAFETENSORS_SUFFIXES):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated files raise many different types
        raise CheckpointError(
            f"could not read {what} {path!r} ({size} bytes): {type(exc).__name__}: {exc}. "
            "The file is truncated, corrupt or not a weight file; fetch it again."
        ) from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} {path!r} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def unwrap_state_dict(state: Mapping, *, nested_keys=("state_dict", "model", "module", "net")) -> dict:
    """Return the tensor dict inside common wrappers ({"state_dict": ...}, {"model": ...}) and strip a
    ``module.`` prefix left by DataParallel/DDP."""
    state = dict(state)
    for _ in range(3):  # wrappers are sometimes nested
        inner = next((state[k] for k in nested_keys if isinstance(state.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        state = dict(inner)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def describe_keys(keys, limit: int = 5) -> str:
    """A short, readable sample of key names for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_json_object(path: str, error: type = CheckpointError) -> dict:
    """A JSON file that must hold an object (a model config, an index); anything else is ``error`` naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise error(f"could not read {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path!r} is not a JSON object")
    return data
