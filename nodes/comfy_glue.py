"""The only place that touches ComfyUI: model folders, devices, offloading, progress and interrupts.

Every ComfyUI import is inside a function, so this module (and every node module) imports without ComfyUI.
Without ComfyUI the helpers fall back to plain behaviour (CPU or the first CUDA device, no progress bar),
which is what the unit tests exercise; inside ComfyUI they use ComfyUI's own machinery.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import torch

from ..models.checkpoint_io import WEIGHT_SUFFIXES
from ..models.errors import CheckpointError

log = logging.getLogger("salient_background")


def _comfy_available() -> bool:
    try:
        import comfy.model_management  # noqa: F401
    except Exception:  # ImportError, or ComfyUI half-initialised
        return False
    return True


# ---------------------------------------------------------------------------------------------- model folders
def register_model_folder(name: str, default_subdir: str, extensions: Iterable[str] = WEIGHT_SUFFIXES) -> None:
    """Make ``name`` a ComfyUI model folder (``models/<default_subdir>``) listing only weight files.

    If the folder already exists (another pack, or an ``extra_model_paths.yaml`` entry, which ComfyUI
    creates with an empty extension set meaning "every file"), keep its paths and merge our extensions.
    """
    try:
        import folder_paths
    except ImportError:
        return
    exts = set(extensions)
    default_path = os.path.join(folder_paths.models_dir, default_subdir)
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        folder_paths.folder_names_and_paths[name] = ([default_path], exts)
        return
    paths, old_exts = entry
    if default_path not in paths:
        paths = list(paths) + [default_path]
    folder_paths.folder_names_and_paths[name] = (paths, set(old_exts) | exts)


def list_model_files(folder: str) -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    return sorted(folder_paths.get_filename_list(folder))


def model_folder_paths(folder: str) -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    return list(folder_paths.get_folder_paths(folder))


def resolve_model_file(folder: str, name: str, *, where_to_get: str) -> str:
    """Full path of ``name`` in the model folder ``folder`` (or ``name`` itself if it is an existing path).

    A missing file raises a :class:`CheckpointError` naming every folder searched and where to get it.
    """
    if os.path.isfile(name):
        return name
    try:
        import folder_paths

        path = folder_paths.get_full_path(folder, name)
    except ImportError:
        path = None
    if path and os.path.isfile(path):
        return path
    searched = model_folder_paths(folder) or ["(no ComfyUI model folders: pass a file path)"]
    raise CheckpointError(
        f"model file {name!r} not found in the '{folder}' model folder. Searched: {', '.join(searched)}. "
        f"{where_to_get}"
    )


# ---------------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    if _comfy_available():
        import comfy.model_management as mm

        return mm.get_torch_device()
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def offload_device() -> torch.device:
    if _comfy_available():
        import comfy.model_management as mm

        return mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, MASK) live between nodes."""
    if _comfy_available():
        import comfy.model_management as mm

        return mm.intermediate_device()
    return torch.device("cpu")


def wrap_for_offload(model: torch.nn.Module):
    """Wrap a helper network in a ComfyUI ``ModelPatcher`` so model management can load and offload it.

    Without ComfyUI the bare module is returned.
    """
    if not _comfy_available():
        return model
    import comfy.model_patcher

    model.to(offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=torch_device(), offload_device=offload_device())


def load_on_device(wrapped) -> torch.nn.Module:
    """Ask ComfyUI to put the wrapped model on its compute device (offloading others if needed)."""
    if hasattr(wrapped, "model") and _comfy_available():
        import comfy.model_management as mm

        mm.load_models_gpu([wrapped])
        return wrapped.model
    module = wrapped
    module.to(torch_device())
    return module


def free_memory_hint() -> None:
    if _comfy_available():
        import comfy.model_management as mm

        mm.soft_empty_cache()


# ---------------------------------------------------------------------------------------------- progress
class Progress:
    """``comfy.utils.ProgressBar`` plus an interrupt check on every step; a no-op outside ComfyUI."""

    def __init__(self, total: int):
        self.total = total
        self._bar = None
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(total)
        except Exception:
            self._bar = None

    def check_interrupt(self) -> None:
        if _comfy_available():
            import comfy.model_management as mm

            mm.throw_exception_if_processing_interrupted()

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        self.check_interrupt()
