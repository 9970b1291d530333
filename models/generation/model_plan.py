"""Which models a run uses, worked out once from the user's paths: the :class:`ModelPlan`.

:func:`plan_models` takes what the user gave (a ``photo-background-generation`` pipeline folder, or an inpainting
model -- a diffusers folder of any base, or SD2's original-layout single file with its config folder -- and a salient
ControlNet), makes every check that needs no weights (the folder layout, the single file's config folder, which base
the model is, where the ControlNet is and whether it fits that base) and returns a frozen plan. The loaders
(:mod:`.loading`), the commands, the trainer and the nodes take the plan instead of deciding again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from ..bases import InpaintingBase, base_mismatch_message, base_of_model
from ..errors import CheckpointError, InputError

PathLike = Union[str, os.PathLike]

# the sub-folders of a diffusers inpainting model (SDXL adds a second text encoder and tokenizer)
BASE_MODEL_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
XL_EXTRA_SUBFOLDERS = ("text_encoder_2", "tokenizer_2")

# -- the single-file checkpoint (what ComfyUI's Load Checkpoint reads; SD2 inpainting) -------------------------
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The small files of the diffusers folder that say how to build the networks the single file holds. They are the
# registry's "sd2-configs" download (python -m salient_background download sd2-configs) and sit in
# <models>/diffusers/stable-diffusion-2-inpainting/, next to ComfyUI's <models>/checkpoints/.
SD2_CONFIG_DIRNAME = "stable-diffusion-2-inpainting"
SINGLE_FILE_CONFIG_FILES = (
    "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
)


@dataclass(frozen=True)
class ModelPlan:
    """The models of one run, checked without reading weights.

    ``base``: the inpainting base of the model. ``model_path``: the inpainting model, a diffusers folder or (SD2) an
    original-layout single file (``single_file``). ``config_dir``: the folder with its configs and tokenizer (the
    model folder itself, or the single file's config folder). ``controlnet_path``: the salient ControlNet (None:
    none is used, the base's plain inpainting). ``controlnet_base``: its base as its config, metadata or header
    shapes tell (None when only its weights could: the loader checks it then). ``pipeline_folder``: the
    ``photo-background-generation`` folder the paths came from, if one was given."""

    base: InpaintingBase
    model_path: str
    single_file: bool
    config_dir: str
    controlnet_path: Optional[str] = None
    controlnet_base: Optional[InpaintingBase] = None
    pipeline_folder: Optional[str] = None

    @property
    def uses_controlnet(self) -> bool:
        return self.controlnet_path is not None


def plan_models(pipeline_path: Optional[PathLike] = None, *, base_model_path: Optional[PathLike] = None,
                controlnet_path: Optional[PathLike] = None, use_controlnet: bool = True,
                config_dir: Optional[PathLike] = None) -> ModelPlan:
    """The :class:`ModelPlan` of these paths: ``pipeline_path`` (the ``photo-background-generation`` layout: the
    model's sub-folders + ``controlnet/``) or ``base_model_path`` (a diffusers inpainting folder of any base, or SD2's
    single file, whose config folder is ``config_dir`` or found beside it: :func:`find_config_dir`), and
    ``controlnet_path`` (overrides the pipeline folder's ``controlnet/``; an SDXL folder's ``controlnet/`` is used
    when none is given). ``use_controlnet=False``: no ControlNet.

    Raises :class:`InputError` / :class:`CheckpointError` -- the messages say what to fix -- for: both or neither
    model given, a model that is not there or not an inpainting model folder or single file, a single file without
    its config folder, no ControlNet where one is needed, a ControlNet path that is not there, and a ControlNet
    whose config, metadata or header shapes show another base."""
    if pipeline_path and base_model_path:
        raise InputError("give either a pipeline folder or an inpainting model, not both")
    model = pipeline_path or base_model_path
    if not model:
        raise InputError(
            "no model given: pass the photo-background-generation pipeline folder, or an inpainting model together "
            "with a ControlNet checkpoint"
        )
    model = os.fspath(model)
    # the layout first (its errors say what to fix), then the base, decided once
    single_file, base, found_config_dir = _check_model_path(model, config_dir)
    controlnet = controlnet_base = None
    if use_controlnet:
        controlnet = _controlnet_path(base, model, controlnet_path, pipeline_path)
        controlnet_base = _controlnet_fitting(base, controlnet)
    return ModelPlan(base=base, model_path=model, single_file=single_file, config_dir=found_config_dir,
                     controlnet_path=controlnet, controlnet_base=controlnet_base,
                     pipeline_folder=os.fspath(pipeline_path) if pipeline_path else None)


def _controlnet_path(base: InpaintingBase, model: str, given: Optional[PathLike], pipeline_path) -> str:
    """The ControlNet to use: the one given, else the pipeline folder's (an SDXL folder's) ``controlnet/``."""
    if given is not None:
        return os.fspath(given)
    if base.xl_pipeline:
        path = os.path.join(model, "controlnet")
        if not os.path.isdir(path):
            raise InputError(f"no ControlNet given and {model!r} has no 'controlnet/' folder: pass a salient ControlNet "
                             f"trained on SDXL inpainting, or run the inpainting baseline (ControlNet scale 0)")
        return path
    if pipeline_path:
        path = os.path.join(os.fspath(pipeline_path), "controlnet")
        if not os.path.isdir(path):
            raise CheckpointError(
                f"{os.fspath(pipeline_path)!r} has no 'controlnet/' folder: it is not the photo-background-generation "
                "layout. Pass the ControlNet checkpoint separately, or run the SI2 baseline (ControlNet scale 0)."
            )
        return path
    raise InputError(
        "no ControlNet given: pass the salient ControlNet checkpoint (folder, .safetensors or .pth), "
        "or run the SI2 baseline (ControlNet scale 0)"
    )


def _controlnet_fitting(model_base: InpaintingBase, controlnet: str) -> Optional[InpaintingBase]:
    from ..networks.controlnet_checkpoint import resolve_controlnet_path

    resolve_controlnet_path(controlnet)  # there, and a ControlNet form (the loader's own message otherwise)
    return check_controlnet_fits(model_base, controlnet)


def check_controlnet_fits(model_base: InpaintingBase, controlnet_path: Optional[PathLike]) -> Optional[InpaintingBase]:
    """The base of the ControlNet at ``controlnet_path`` as its config, metadata or header shapes tell (None when
    only its weights could: the loader checks then); :class:`InputError` naming both bases when it is another base
    than ``model_base``."""
    from ..networks.controlnet_checkpoint import controlnet_base_cheaply

    if not controlnet_path:
        return None
    found = controlnet_base_cheaply(controlnet_path)
    if found is not None and found.name != model_base.name:
        raise InputError(base_mismatch_message(found, model_base,
                                               controlnet=f"the ControlNet {os.fspath(controlnet_path)!r}"))
    return found


# ---------------------------------------------------------------------------------------------------------------
# the model path: folder layout, single file and its config folder
# ---------------------------------------------------------------------------------------------------------------
def _require_folder(root: str, sub: str, what: str) -> str:
    path = os.path.join(root, sub)
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{what} {root!r} has no '{sub}/' folder. Expected a diffusers pipeline folder with "
            f"{', '.join(s + '/' for s in BASE_MODEL_SUBFOLDERS)} (e.g. a local copy of "
            "stabilityai/stable-diffusion-2-inpainting or yahoo-inc/photo-background-generation)."
        )
    return path


def config_dir_candidates(checkpoint_path: PathLike) -> list[str]:
    """Where the config folder of a single-file checkpoint is looked for, in order: beside the file, then the
    ComfyUI layout (<models>/checkpoints/FILE -> <models>/diffusers/stable-diffusion-2-inpainting)."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    return [os.path.join(folder, SD2_CONFIG_DIRNAME), os.path.join(os.path.dirname(folder), "diffusers", SD2_CONFIG_DIRNAME)]


def _missing_config_files(folder: str) -> list[str]:
    return [f for f in SINGLE_FILE_CONFIG_FILES if not os.path.isfile(os.path.join(folder, *f.split("/")))]


def find_config_dir(checkpoint_path: PathLike, config_dir: Optional[PathLike] = None) -> str:
    """The folder holding :data:`SINGLE_FILE_CONFIG_FILES` for the single file ``checkpoint_path`` (``config_dir``
    when given), or a :class:`CheckpointError` naming the download command. A full diffusers SD2-inpainting folder
    qualifies too."""
    checkpoint_path = os.fspath(checkpoint_path)
    candidates = [os.fspath(config_dir)] if config_dir else config_dir_candidates(checkpoint_path)
    partial = None
    for folder in candidates:
        if os.path.isdir(folder):
            missing = _missing_config_files(folder)
            if not missing:
                return folder
            partial = partial or (folder, missing)
    models_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_path)))
    command = f"python -m salient_background download sd2-configs --models-dir {models_dir}"
    found = f"; {partial[0]!r} lacks {', '.join(partial[1])}" if partial else ""
    raise CheckpointError(
        f"the single-file checkpoint {checkpoint_path!r} needs the small config and tokenizer files of "
        f"stabilityai/stable-diffusion-2-inpainting (~1.6 MB), looked for in {' and '.join(map(repr, candidates))}"
        f"{found}. Get them with: {command}"
    )


def validate_base_model_path(path: PathLike, config_dir: Optional[PathLike] = None) -> str:
    """Cheap check (no weights read) of an inpainting model path: a diffusers folder of any base, or SD2's
    single-file checkpoint (``.safetensors`` / ``.ckpt``) whose config folder is found. Returns "folder" or
    "single_file"; raises a :class:`CheckpointError` that says what to fix."""
    single_file, _, _ = _check_model_path(os.fspath(path), config_dir)
    return "single_file" if single_file else "folder"


def _check_model_path(path: str, config_dir: Optional[PathLike]) -> tuple[bool, InpaintingBase, str]:
    """(is it a single file, its base, its config folder): the checks of :func:`validate_base_model_path`."""
    if os.path.isdir(path):
        _require_folder(path, "unet", "the inpainting model folder")
        base = base_of_model(path)  # unet/config.json: SD2, SD1.5 or SDXL inpainting
        extra = XL_EXTRA_SUBFOLDERS if base.text_encoders == 2 else ()
        for sub in BASE_MODEL_SUBFOLDERS + extra:
            _require_folder(path, sub, f"the {base.title} folder")
        return False, base, path
    if os.path.isfile(path):
        if not path.lower().endswith(SINGLE_FILE_SUFFIXES):
            raise CheckpointError(
                f"{path!r} is not an SD2-inpainting checkpoint: give 512-inpainting-ema.safetensors (or .ckpt), or "
                "the diffusers folder of stabilityai/stable-diffusion-2-inpainting"
            )
        base = base_of_model(path)
        if not base.single_file:
            raise CheckpointError(
                f"{path!r} is a {base.title} single file; the pipeline reads that base from its diffusers folder "
                f"({base.diffusers_repo}, see `python -m salient_background download --list`)")
        return True, base, find_config_dir(path, config_dir)
    raise CheckpointError(
        f"SD2-inpainting model not found: {path!r}. Give the single-file checkpoint 512-inpainting-ema.safetensors "
        "(the one in ComfyUI's models/checkpoints) or the local diffusers folder of "
        "stabilityai/stable-diffusion-2-inpainting (or of yahoo-inc/photo-background-generation), downloaded beforehand."
    )
