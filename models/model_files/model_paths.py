"""Where ComfyUI keeps model files, found without importing ComfyUI (for the command line and the downloader).

Sources, in the order ComfyUI itself would use them:

* ``--models-dir DIR`` (explicit; then only ``DIR/<folder>`` is used);
* the ComfyUI install around the pack (it lives in ``ComfyUI/custom_nodes/<clone>/``, so ``ComfyUI/models``),
  or the one named by the ``COMFYUI_PATH`` environment variable;
* ``extra_model_paths.yaml`` in that ComfyUI folder and any file passed with ``--extra-model-paths``, read the
  way ComfyUI reads them (``utils/extra_config.py``): per section an optional ``base_path`` (``~`` and ``$VARS``
  expanded, relative to the YAML's folder), optional ``is_default`` (those folders go first and receive
  downloads), then ``<folder>: <path>`` entries whose value may hold several paths, one per line.

Inside a running ComfyUI the nodes use ``folder_paths`` instead (see ``nodes/comfy_glue.py``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from ..errors import InputError, UserFacingError
from .model_registry import FOLDER_DEFAULT_SUBDIRS

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_comfyui_root(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "folder_paths.py")) or (
        os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))
    )


def find_comfyui_root(pack_root: str = PACK_ROOT) -> str | None:
    """The ComfyUI folder whose ``custom_nodes`` holds the pack (the clone itself or a symlink to it)."""
    for candidate in dict.fromkeys([os.path.abspath(pack_root), os.path.realpath(pack_root)]):
        parent = os.path.dirname(candidate)
        if os.path.basename(parent) == "custom_nodes":
            root = os.path.dirname(parent)
            if is_comfyui_root(root):
                return root
    return None


# ---------------------------------------------------------------------------------------------- extra_model_paths
def _load_yaml(path: str):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)  # as ComfyUI's utils/extra_config.py reads it


def read_extra_model_paths(yaml_path: str) -> list[tuple[str, str, bool]]:
    """``(folder name, absolute path, is_default)`` entries of one extra_model_paths.yaml, in file order."""
    try:
        config = _load_yaml(yaml_path)
    except OSError as exc:
        raise UserFacingError(f"cannot read {yaml_path!r}: {exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserFacingError(f"{yaml_path!r} is not valid YAML: {exc}") from exc
    if config is not None and not isinstance(config, dict):
        raise UserFacingError(f"{yaml_path!r} does not hold sections of model folders (its top level is a "
                              f"{type(config).__name__}, not 'name: ...' entries)")
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    entries = []
    for conf in (config or {}).values():
        if not isinstance(conf, dict):
            continue
        conf = dict(conf)
        base_path = conf.pop("base_path", None)
        if base_path:
            base_path = os.path.expandvars(os.path.expanduser(str(base_path)))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
        is_default = bool(conf.pop("is_default", False))
        for folder, value in conf.items():
            if not isinstance(value, str):
                continue  # e.g. custom_nodes given as a list by hand: not a model folder we care about
            for item in value.split("\n"):
                item = item.strip()
                if not item:
                    continue
                if base_path:
                    full = os.path.join(base_path, item)
                elif not os.path.isabs(item):
                    full = os.path.abspath(os.path.join(yaml_dir, item))
                else:
                    full = item
                entries.append((str(folder), os.path.normpath(full), is_default))
    return entries


# ---------------------------------------------------------------------------------------------- --models-dir
CREATE_MODELS_DIR_FLAG = "--create-models-dir"


def check_models_dir(path: str, *, create: bool) -> str:
    """A ``--models-dir`` the user typed must already be a folder: a misspelt path would otherwise become a new,
    empty models folder that gigabytes are downloaded into. ``create`` (the user passed ``--create-models-dir``, or
    the path is a command's own default) lets a missing folder through; whoever writes into it creates it."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise InputError(f"--models-dir {path!r} is a file, not a folder: give the models folder (e.g. ComfyUI/models)")
    if not create:
        raise InputError(
            f"--models-dir {path!r} does not exist. Check the path (ComfyUI's is ComfyUI/models), or add "
            f"{CREATE_MODELS_DIR_FLAG} to start a new models folder there."
        )
    return path


# ---------------------------------------------------------------------------------------------- locations
@dataclass
class ModelLocations:
    """Candidate folders per ComfyUI model folder name; the first one receives downloads."""

    folders: dict[str, list[str]] = field(default_factory=dict)
    origin: list[str] = field(default_factory=list)  # how they were found, for messages

    def paths(self, folder: str) -> list[str]:
        return list(self.folders.get(folder, []))

    def target(self, folder: str) -> str:
        paths = self.folders.get(folder)
        if not paths:
            raise UserFacingError(
                f"no '{folder}' model folder is known ({'; '.join(self.origin) or 'nothing found'}). "
                f"Pass --models-dir DIR (files then go to DIR/{FOLDER_DEFAULT_SUBDIRS.get(folder, folder)})."
            )
        return paths[0]

    def _add(self, folder: str, path: str, first: bool = False) -> None:
        paths = self.folders.setdefault(folder, [])
        path = os.path.normpath(path)
        if path in paths:
            return
        if first:
            paths.insert(0, path)
        else:
            paths.append(path)


def discover(
    models_dir: str | None = None,
    *,
    comfyui_root: str | None = None,
    extra_configs=(),
    pack_root: str = PACK_ROOT,
    use_env: bool = True,
) -> ModelLocations:
    """Find the model folders (see the module docstring for the order). Raises a :class:`UserFacingError` that
    says what to pass when nothing is found."""
    locations = ModelLocations()
    if models_dir:
        models_dir = os.path.abspath(os.path.expanduser(models_dir))
        for folder, subdir in FOLDER_DEFAULT_SUBDIRS.items():
            locations._add(folder, os.path.join(models_dir, subdir))
        locations.origin.append(f"--models-dir {models_dir}")
        return locations

    root = comfyui_root
    how = "given ComfyUI folder"
    if root is None:
        root = find_comfyui_root(pack_root)
        how = "ComfyUI around the pack"
    if root is None and use_env and os.environ.get("COMFYUI_PATH"):
        root = os.environ["COMFYUI_PATH"]
        how = "COMFYUI_PATH"
    configs = list(extra_configs)
    if root is not None:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise UserFacingError(f"ComfyUI folder {root!r} ({how}) does not exist")
        for folder, subdir in FOLDER_DEFAULT_SUBDIRS.items():
            locations._add(folder, os.path.join(root, "models", subdir))
        locations.origin.append(f"{how}: {root}")
        default_yaml = os.path.join(root, "extra_model_paths.yaml")
        if os.path.isfile(default_yaml):
            configs.insert(0, default_yaml)
    for cfg in configs:
        for folder, path, is_default in read_extra_model_paths(cfg):
            if folder in FOLDER_DEFAULT_SUBDIRS:
                locations._add(folder, path, first=is_default)
        locations.origin.append(f"extra model paths: {os.path.abspath(cfg)}")
    if not locations.folders:
        raise UserFacingError(
            "cannot tell where ComfyUI keeps its models: the pack is not inside ComfyUI/custom_nodes/, COMFYUI_PATH "
            "is not set and no extra_model_paths.yaml was given. Pass --models-dir DIR (for example "
            "--models-dir /path/to/ComfyUI/models) or --extra-model-paths /path/to/extra_model_paths.yaml."
        )
    return locations


def installed_in(entry, locations: ModelLocations) -> str | None:
    """The candidate folder holding a copy of a registry file (not checked for integrity), or None."""
    for base in locations.paths(entry.folder):
        if os.path.isfile(os.path.join(base, *entry.filename.split("/"))):
            return base
    return None


def installed_path(entry, locations: ModelLocations) -> str | None:
    """The first existing copy of a registry file in its candidate folders (not checked for integrity)."""
    base = installed_in(entry, locations)
    return os.path.join(base, *entry.filename.split("/")) if base else None
