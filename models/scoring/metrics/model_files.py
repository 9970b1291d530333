"""Where each metric's model lives on disk, and the error that says how to get it.

Every metric model is a row (or a group of rows) of ``models/model_files/model_registry.py`` in the ComfyUI-style
folder ``models/metrics``. Loaders read local files only; nothing here touches the network. A missing file is a
:class:`MetricModelMissing` naming the file, the folders searched and the exact download command, so a caller can
skip that one metric and run the others.
"""
from __future__ import annotations

import os

from ...errors import CheckpointError, UserFacingError
from ...model_files import model_registry
from ...model_files.model_paths import ModelLocations

# metric -> (registry group, what it is for messages). A group of several files is a model *folder*
# (transformers' save_pretrained layout); a group of one file is that file.
METRIC_MODELS: dict[str, tuple[str, str]] = {
    "fid": ("metrics_inception", "FID/KID Inception-v3 (FID weights)"),
    "clip": ("metrics_clip", "CLIP ViT-L/14 (CLIP score)"),
    "lpips": ("metrics_lpips_alexnet", "AlexNet backbone of LPIPS"),
    "object_similarity": ("metrics_dinov2", "DINOv2 ViT-B/14 (object similarity)"),
}
METRIC_MODELS["kid"] = METRIC_MODELS["fid"]  # the same Inception features

# The files a model folder cannot load without (the others, e.g. a slow tokenizer's vocab.json beside
# tokenizer.json, are downloaded but optional: transformers' save_pretrained does not write them all).
REQUIRED_FOLDER_FILES: dict[str, tuple[str, ...]] = {
    "metrics_clip": ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"),
    "metrics_dinov2": ("config.json", "model.safetensors", "preprocessor_config.json"),
}


class MetricModelMissing(CheckpointError):
    """A metric's model file (or folder) is not on disk. ``metric`` names the metric, ``download_command`` the
    command that fetches it; the message says both and where the pack looked."""

    def __init__(self, metric: str, message: str, download_command: str):
        super().__init__(message)
        self.metric = metric
        self.download_command = download_command


def _rows(metric: str) -> list:
    if metric not in METRIC_MODELS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRIC_MODELS))}")
    group, _ = METRIC_MODELS[metric]
    return [model_registry.BY_KEY[k] for k in model_registry.GROUPS[group]]


def _is_folder(rows) -> bool:
    return len(rows) > 1


def _folder_files(rows) -> tuple[str, ...]:
    return REQUIRED_FOLDER_FILES[rows[0].group]


def missing_error(metric: str, searched, missing_files=(), *, model_folder: bool = True) -> MetricModelMissing:
    """The error for ``metric``'s model not found in ``searched`` (``missing_files``: which files lack).
    ``model_folder``: ``searched`` are ComfyUI ``metrics`` folders (the manual hint then saves into the first)."""
    rows = _rows(metric)
    _, title = METRIC_MODELS[metric]
    searched = [s for s in searched if s]
    looked = ", ".join(searched) if searched else "(no model folder known)"
    lacking = f" (missing: {', '.join(missing_files)})" if missing_files else ""
    command = model_registry.download_command(rows)
    message = (f"the {metric} metric needs the {title} model, not found{lacking}. Looked in: {looked}. "
               f"{model_registry.where_to_get(rows, target_dir=searched[0] if searched and model_folder else None)}")
    return MetricModelMissing(metric, message, command)


def check_model_path(metric: str, path: str) -> str:
    """``path`` itself when it holds ``metric``'s model (a file, or a folder with every registry file), else
    :class:`MetricModelMissing`. Used by every loader, so a wrong path names the download command too."""
    rows = _rows(metric)
    if _is_folder(rows):
        lacking = [n for n in _folder_files(rows) if not os.path.isfile(os.path.join(path, n))]
        if not os.path.isdir(path) or lacking:
            raise missing_error(metric, [path], lacking if os.path.isdir(path) else (), model_folder=False)
        return path
    if not os.path.isfile(path):
        raise missing_error(metric, [path], model_folder=False)
    return path


def find_metric_model(metric: str, locations: ModelLocations) -> str:
    """The local path of ``metric``'s model: a file (fid/kid, lpips) or a model folder (clip,
    object_similarity), searched in the ``metrics`` model folders of ``locations`` (``model_paths.discover``)."""
    rows = _rows(metric)
    folders = locations.paths(rows[0].folder)
    for base in folders:
        if _is_folder(rows):
            candidate = os.path.join(base, rows[0].filename.split("/", 1)[0])
            if all(os.path.isfile(os.path.join(candidate, n)) for n in _folder_files(rows)):
                return candidate
        else:
            candidate = os.path.join(base, *rows[0].filename.split("/"))
            if os.path.isfile(candidate):
                return candidate
    raise missing_error(metric, folders)


def available_metric_models(locations: ModelLocations, metrics=None) -> dict:
    """``{metric: path or MetricModelMissing}`` for ``metrics`` (default: all), so a caller runs those present
    and reports the others."""
    found = {}
    for metric in metrics or METRIC_MODELS:
        try:
            found[metric] = find_metric_model(metric, locations)
        except MetricModelMissing as exc:
            found[metric] = exc
    return found


class MetricPackageMissing(UserFacingError):
    """A Python package a metric needs is not installed (the ``metrics`` extra)."""


def require_packages(metric: str, *modules: str) -> None:
    """Raise :class:`MetricPackageMissing` naming the install command when a module ``metric`` needs is absent."""
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        raise MetricPackageMissing(
            f"the {metric} metric needs the Python package(s) {', '.join(absent)}: install them with "
            "pip install 'salient-background[metrics]' (or pip install torchmetrics torch-fidelity lpips)")
