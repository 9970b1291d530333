"""The frozen models of the run's base, and the ControlNet the run trains: which base, loaded how, checked how.

The base (:mod:`models.bases`) is a property of the pretrained model: read from its folder
(``unet/config.json``, ``model_index.json``) or named with ``--base``, and then checked against the folder before any
weight is read. SD2 inpainting is also accepted as the single file ComfyUI loads; SD1.5 and SDXL inpainting as
diffusers folders. SDXL brings two text encoders and tokenizers (given to the rest of the trainer as lists) and a
VAE that overflows in fp16 (kept in fp32 then, unless an fp16-safe VAE is given with ``--vae``).

A new ControlNet is ``ControlNetModel.from_unet`` of the base's UNet; before training starts its config is checked
against what ComfyUI can build (:mod:`models.networks.comfy_constraints`).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..models.errors import CheckpointError, InputError
from ..models.bases import InpaintingBase, as_base, base_for_pretrained_folder, base_mismatch_message

log = logging.getLogger("salient_background")


def resolve_base(config) -> InpaintingBase:
    """The run's base: from the model folder (checked against ``config.base`` when given), or ``config.base`` /
    SD2 for SD2's single file. Reads only small JSON files."""
    path = config.base_model
    if not path:
        raise InputError("no base model: pass --base-model, the local diffusers folder of an inpainting model")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "unet", "config.json")):
        return base_for_pretrained_folder(path, config.base)
    requested = as_base(config.base)
    if os.path.isfile(path) and not requested.single_file:
        raise InputError(f"{path!r} is a single file; {requested.title} is trained from its diffusers folder "
                         f"(e.g. a local copy of {requested.diffusers_repo})")
    return requested  # SD2's folder checks and single-file loading say what is wrong with it


def vae_dtype_for(base: InpaintingBase, config, weight_dtype: torch.dtype) -> torch.dtype:
    """SDXL's own VAE overflows in fp16: it runs in fp32 then, unless ``--vae`` gave another (fp16-safe) one."""
    if base.vae_overflows_in_fp16 and weight_dtype == torch.float16 and not config.vae:
        log.info("SDXL's VAE overflows in fp16: it runs in fp32 (pass --vae with an fp16-safe VAE to change that)")
        return torch.float32
    return weight_dtype


@dataclass
class BaseComponents:
    vae: Any
    text_encoder: Any  # one encoder; SDXL: the list of its two
    tokenizer: Any  # likewise
    unet: Any


def _load_xl_folder(path: str) -> BaseComponents:
    """SDXL's parts, loaded by the SDXL pipeline's loader (all fp32 here; the trainer casts them)."""
    from ..models.generation.loading import load_xl_components

    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        if not os.path.isdir(os.path.join(path, sub)):
            raise CheckpointError(f"the SDXL inpainting folder {path!r} has no '{sub}/' folder (a diffusers SDXL "
                                  "folder has unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler)")
    vae, text_encoder, text_encoder_2, tokenizers, unet = load_xl_components(path, torch.float32)
    return BaseComponents(vae, [text_encoder, text_encoder_2], list(tokenizers), unet)


def load_base_components(base: InpaintingBase, config) -> BaseComponents:
    """VAE, text encoder(s), tokenizer(s) and UNet of the base model, on the CPU in fp32; ``config.vae`` replaces
    the VAE."""
    if base.text_encoders == 2:
        parts = _load_xl_folder(config.base_model)
    else:  # SD2 and SD1.5 share the folder layout (SD2 also as a single file)
        from ..models.generation.loading import load_components

        vae, text_encoder, tokenizer, unet, _ = load_components(config.base_model)
        parts = BaseComponents(vae, text_encoder, tokenizer, unet)
    if config.vae:
        from diffusers import AutoencoderKL

        try:
            parts.vae = AutoencoderKL.from_pretrained(config.vae, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"could not load the VAE folder {config.vae!r}: {type(exc).__name__}: {exc}") from exc
    return parts


def scheduler_config(config) -> dict:
    """The base's scheduler config (the training noise schedule is read from it)."""
    from ..models.generation.model_plan import find_config_dir

    folder = config.base_model
    if os.path.isfile(folder):
        folder = find_config_dir(folder)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as fh:
        return json.load(fh)


def check_comfy_buildable(controlnet_config, unet_config) -> None:
    """Refuse a ControlNet ComfyUI could not build. When the base UNet itself is no model ComfyUI recognises (a
    test or pruned model), nothing of this run can go to ComfyUI anyway: then the problems are only logged."""
    from ..models.networks.comfy_constraints import comfy_buildable_problems, comfy_family

    problems = comfy_buildable_problems(controlnet_config)
    if not problems:
        return
    if comfy_family(unet_config) is None:
        log.warning("the base UNet is no model ComfyUI recognises, so this ControlNet will not load in ComfyUI "
                    "either: %s", "; ".join(problems))
        return
    raise InputError("ComfyUI could not build the ControlNet this run would train: " + "; ".join(problems)
                     + ". Use the defaults (--conditioning-channels 16 32 96 256) and an unmodified base model")


def _unet_config_file(config) -> str:
    from ..models.generation.model_plan import find_config_dir

    folder = config.base_model if os.path.isdir(config.base_model) else find_config_dir(config.base_model)
    return os.path.join(folder, "unet", "config.json")


def precheck_new_controlnet(config) -> None:
    """Before any weight is read: build the new ControlNet's config from ``unet/config.json`` alone (weightless, on
    the meta device) and refuse it when ComfyUI could not build it."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    from ..models.library_progress import apply_library_progress_setting

    apply_library_progress_setting()  # the trainer's first import of diffusers
    if config.controlnet or not os.path.isfile(_unet_config_file(config)):
        return  # fine-tuning: the ControlNet's own config is checked once loaded
    with open(_unet_config_file(config)) as fh:
        unet_config = json.load(fh)
    with torch.random.fork_rng(devices=[]), init_empty_weights():  # leaves the random state as it was
        unet = UNet2DConditionModel.from_config(unet_config)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, load_weights_from_unet=False,
                                               conditioning_embedding_out_channels=tuple(config.conditioning_channels))
    check_comfy_buildable(controlnet.config, unet.config)


def make_controlnet(config, base: InpaintingBase, unet):
    """The ControlNet to train: fine-tuned from ``config.controlnet`` (which must be for the same base) or a new
    ``from_unet`` copy of the UNet's encoder; refused when ComfyUI could not build it."""
    from diffusers import ControlNetModel

    if config.controlnet:
        from ..models.generation.loading import load_controlnet
        from ..models.networks.controlnet_checkpoint import controlnet_base

        found = controlnet_base(config.controlnet)
        if found.name != base.name:
            raise InputError(base_mismatch_message(
                found, base, controlnet=f"--controlnet {config.controlnet!r}",
                fix="give a ControlNet of the same base, or none to start from the UNet"))
        controlnet = load_controlnet(config.controlnet, unet=unet)
    else:
        with torch.random.fork_rng(devices=[]):  # the new conditioning embedding's random init: a function of the seed
            torch.manual_seed(config.seed)
            controlnet = ControlNetModel.from_unet(
                unet, conditioning_channels=3, conditioning_embedding_out_channels=tuple(config.conditioning_channels)
            )
        return controlnet  # its config passed precheck_new_controlnet
    check_comfy_buildable(controlnet.config, unet.config)
    return controlnet
