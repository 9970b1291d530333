"""The only place that touches ComfyUI: model folders, devices, offloading, progress and interrupts.

Every ComfyUI import is inside a function, so this module (and every node module) imports without ComfyUI.
Without ComfyUI the helpers fall back to plain behaviour (CPU or the first CUDA device, no progress bar),
which is what the unit tests exercise; inside ComfyUI they use ComfyUI's own machinery.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable

import torch

from ..models.networks.checkpoint_io import WEIGHT_SUFFIXES
from ..models.errors import CheckpointError, InputError
from ..models.model_files.model_registry import FOLDER_DEFAULT_SUBDIRS

log = logging.getLogger("salient_background")


def _comfy_available() -> bool:
    try:
        import comfy.model_management  # noqa: F401
    except Exception:  # ImportError, or ComfyUI half-initialised
        return False
    return True


# ---------------------------------------------------------------------------------------------- model folders
# The model folders the pack adds to ComfyUI (sub-folders of ComfyUI/models named in models/model_files/model_registry.py).
# ComfyUI's own folders (checkpoints, controlnet, diffusers) are left as ComfyUI defines them.
PACK_MODEL_FOLDERS = ("salient", "sams")


def register_pack_model_folders() -> None:
    """Make every model folder of the pack known to ComfyUI (a no-op outside ComfyUI; safe to call again)."""
    for name in PACK_MODEL_FOLDERS:
        register_model_folder(name, FOLDER_DEFAULT_SUBDIRS[name])


def register_model_folder(name: str, default_subdir: str, extensions: Iterable[str] = WEIGHT_SUFFIXES) -> None:
    """Make ``name`` a ComfyUI model folder (``models/<default_subdir>``) listing only weight files.

    If the folder already exists (another pack, or an ``extra_model_paths.yaml`` entry, which ComfyUI
    creates with an empty extension set meaning "every file"), keep its paths and merge our extensions.
    The only code that writes ComfyUI's folder table.
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
    new_exts = set(old_exts) | exts
    if default_path in paths and new_exts == set(old_exts):
        return  # already registered: leave the entry (and ComfyUI's cached file list) alone
    if default_path not in paths:
        paths = list(paths) + [default_path]
    folder_paths.folder_names_and_paths[name] = (paths, new_exts)
    # ComfyUI caches file lists per folder and revalidates them only by folder mtimes, not by extensions:
    # a list made before this call (under the YAML entry's "every file" set) would keep showing .txt etc.
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(name, None)


# every node module imports this one: the pack's folders are in ComfyUI's model lists from the moment it loads
register_pack_model_folders()


def _folder_paths():
    """ComfyUI's ``folder_paths`` with the pack's folders registered (re-merged if something replaced them since
    the pack loaded), or None outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return None
    register_pack_model_folders()
    return folder_paths


def list_model_files(folder: str) -> list[str]:
    folder_paths = _folder_paths()
    return sorted(folder_paths.get_filename_list(folder)) if folder_paths else []


def model_folder_paths(folder: str) -> list[str]:
    folder_paths = _folder_paths()
    return list(folder_paths.get_folder_paths(folder)) if folder_paths else []


def _find_in_folder(folder: str, name: str) -> str | None:
    folder_paths = _folder_paths()
    path = folder_paths.get_full_path(folder, name) if folder_paths else None
    return path if path and os.path.isfile(path) else None


def resolve_model_file(folder: str, name: str, *, where_to_get: str, registry_key: str | None = None) -> str:
    """Full path of ``name`` in the model folder ``folder`` (or ``name`` itself if it is an existing path).

    A missing file raises a :class:`CheckpointError` naming the file, every folder searched, the exact
    ``python -m salient_background download ...`` command when the file is one of the pack's published files
    (``registry_key``, or ``name`` itself, looked up in ``models/model_files/model_registry.py``) and ``where_to_get``.

    Opt-in: with the environment variable ``SALIENT_BG_AUTO_DOWNLOAD=1`` a missing published file is downloaded
    into the folder's first path (through ``models/model_files/downloader.py``, verified) and its path returned. Without it
    nothing touches the network.
    """
    # the model folder first: a bare name from a node's file list must not pick up a same-named file that
    # happens to sit in ComfyUI's working directory
    path = _find_in_folder(folder, name)
    if path:
        return path
    if os.path.isfile(name):
        return name
    from ..models.model_files import downloader
    from ..models.model_files.model_registry import lookup

    folders = model_folder_paths(folder)
    ours = lookup(name)  # only a file of ours can be fetched under the requested name
    if ours and folders and downloader.auto_download_enabled():
        log.warning("%s=1: downloading %s into %s", downloader.AUTO_DOWNLOAD_ENV,
                    ", ".join(m.filename for m in ours), folders[0])
        for entry in ours:
            downloader.ensure([entry], _locations_for(entry.folder, folders))
        path = _find_in_folder(folder, name)
        if path:
            return path
        for base in folders:  # a diffusers folder (the ControlNet's config + weights) asked for by its name
            candidate = os.path.join(base, *name.split("/"))
            if os.path.isdir(candidate):
                return candidate
    searched = folders or ["(no ComfyUI model folders: pass a file path)"]
    message = downloader.missing_model_message(name if ours or not registry_key else registry_key, searched,
                                               command_args=_models_dir_args())
    if not ours and registry_key and lookup(registry_key):
        message = f"model file {name!r} not found in the '{folder}' model folder. " + message
    if ours or (registry_key and lookup(registry_key)):  # the registry's hint is in the message already: once
        raise CheckpointError(message)
    raise CheckpointError(f"{message} {where_to_get}".strip())


def validate_model_choice(resolve) -> bool | str:
    """A loader's ``VALIDATE_INPUTS``: True when ``resolve()`` finds the model, else the reason as a string.

    Declaring VALIDATE_INPUTS for an input makes ComfyUI skip its own "Value not in list" check, so a workflow naming
    a file this ComfyUI does not have shows our message (the folders searched and the download command) before
    anything runs. With auto-download on, the loader fetches the file, so validation lets it through.
    """
    from ..models.model_files import downloader

    if downloader.auto_download_enabled():
        return True
    try:
        resolve()
    except CheckpointError as exc:
        return str(exc)
    return True


def _models_dir_args() -> str:
    """``--models-dir <ComfyUI's models folder>`` so the suggested command targets this very ComfyUI."""
    folder_paths = _folder_paths()
    models_dir = getattr(folder_paths, "models_dir", None) if folder_paths else None
    if not models_dir:
        return ""
    import shlex

    return f"--models-dir {shlex.quote(models_dir)}"


def _locations_for(folder: str, paths: list[str]):
    from ..models.model_files.model_paths import ModelLocations

    return ModelLocations(folders={folder: list(paths)}, origin=["ComfyUI folder_paths"])


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


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def load_on_device(wrapped) -> torch.nn.Module:
    """Ask ComfyUI to put the wrapped model on its compute device (offloading others if needed)."""
    if hasattr(wrapped, "model") and _comfy_available():
        import comfy.model_management as mm

        # Our helper networks are plain nn.Modules (no comfy.ops layers): ComfyUI's partial "lowvram" load
        # would leave the layers past its budget on the offload device (a device-mismatch error in forward).
        # Ask for the whole model; --novram still requests a partial load, so finish the move ourselves.
        mm.load_models_gpu([wrapped], force_full_load=True)
        module = wrapped.model
        target = torch.device(wrapped.load_device)
        if any(not _same_device(p.device, target) for p in module.parameters()):
            module.to(target)
        return module
    module = wrapped
    module.to(torch_device())
    return module


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


def refuse_nan(**values: float) -> None:
    """ComfyUI checks a FLOAT input only against its min and max, and NaN passes both comparisons (an API client or
    an edited workflow file can send it): refuse it by name, before it silently gives a black or empty result."""
    bad = [name for name, value in values.items() if isinstance(value, float) and math.isnan(value)]
    if bad:
        raise InputError(f"{' and '.join(bad)} is NaN (not a number): set {'them' if len(bad) > 1 else 'it'} to a "
                         "number within the widget's range")


# ---------------------------------------------------------------------------------------------- model sub-folders
def list_model_dirs(folder: str, is_model_dir, max_depth: int = 3) -> list[str]:
    """Relative names ('/'-separated) of sub-folders of the model folder ``folder`` for which
    ``is_model_dir(path)`` is true (e.g. diffusers folders holding a config.json), up to ``max_depth`` deep."""
    names = set()
    for base in model_folder_paths(folder):
        if not os.path.isdir(base):
            continue
        for root, dirs, _files in os.walk(base, followlinks=True):
            rel = os.path.relpath(root, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth >= max_depth:
                dirs[:] = []
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if depth and is_model_dir(root):
                names.add(rel.replace(os.sep, "/"))
                dirs[:] = []  # a model folder's own sub-folders are its parts
    return sorted(names)


def resolve_model_dir(folder: str, name: str) -> str | None:
    """Full path of the sub-folder ``name`` of the model folder ``folder`` (or ``name`` itself if it is an
    existing directory); None when there is none."""
    if os.path.isdir(name):
        return name
    for base in model_folder_paths(folder):
        path = os.path.join(base, *name.split("/"))
        if os.path.isdir(path):
            return path
    return None


# ---------------------------------------------------------------------------------------------- ControlNets, conditioning
def comfy_load_controlnet_state_dict(state_dict: dict):
    """``comfy.controlnet.load_controlnet_state_dict`` (ComfyUI's own loading and model detection)."""
    import comfy.controlnet

    return comfy.controlnet.load_controlnet_state_dict(state_dict)


def comfy_controlnet(control_model, like, extra_conds: list[str]):
    """A stock ``comfy.controlnet.ControlNet`` around ``control_model``, with the devices/dtypes of ``like`` (a
    ControlNet ComfyUI loaded) and the cond entries ``extra_conds`` passed to the control model as keywords."""
    import comfy.controlnet

    return comfy.controlnet.ControlNet(
        control_model,
        global_average_pooling=getattr(like, "global_average_pooling", False),
        load_device=like.load_device,
        manual_cast_dtype=like.manual_cast_dtype,
        extra_conds=list(extra_conds),
    )


def cldm_controlnet_class():
    import comfy.cldm.cldm

    return comfy.cldm.cldm.ControlNet


def apply_controlnet_advanced(positive, negative, control_net, hint_image, strength, start_percent, end_percent, vae=None):
    """What the stock *Apply ControlNet (Advanced)* node does (its own code, called, not copied)."""
    import nodes as comfy_nodes

    return comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control_net, hint_image, strength, start_percent, end_percent, vae=vae
    )


def conditioning_set_values(conditioning, values: dict):
    """``node_helpers.conditioning_set_values``: a copy of ``conditioning`` with ``values`` set on every entry."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, values)
