"""The inpainting bases the salient ControlNet can be built on, the model families ComfyUI recognises, and which base
a file, a state dict, a config or a folder is for -- each described once.

The method is base-agnostic: the salient ControlNet is a copy of an inpainting UNet's encoder (9 input channels:
4 noisy latents + 1 repaint mask + 4 masked-image latents) whose hint is the soft inverted object mask. What differs
between bases is listed here and read by the trainer, the export, the ControlNet loaders (ComfyUI and diffusers), the
pipeline, the commands and the nodes: nothing else in the pack hard-codes a base.

This module is the ground floor of ``models/``: it imports only the error types and the model registry, and
``networks/``, ``generation/``, ``training/`` and ``nodes/`` import it (never the other way round). Everything here
reads configs, key names or header shapes -- never weights.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Union

from .errors import InputError

log = logging.getLogger("salient_background")

# where our exports record their base: config.json and the safetensors metadata
BASE_RECORD = "salient_base"


@dataclass(frozen=True)
class InpaintingBase:
    name: str                      # our id, recorded in exported checkpoints and accepted by --base
    title: str                     # how a person calls it
    context_dim: int               # width of the text embeddings the UNet cross-attends to
    added_conditioning: Optional[str]  # None, or "text_time" (SDXL: pooled text embedding + size/crop time ids)
    resolution: int                # native square resolution in pixels
    vae_scaling_factor: float      # latents = VAE mean * this
    prediction_type: str           # what the UNet predicts
    comfy_model: str               # the class name ComfyUI's model detection gives (comfy.supported_models)
    diffusers_repo: str            # the diffusers-format inpainting model on the Hugging Face hub
    text_encoders: int = 1         # SDXL has two
    # diffusers' ``attention_head_dim`` of the UNet (a legacy name: it holds the number of heads, per level or one for
    # all); the weights cannot tell it, so a ControlNet file without a config gets it from here
    attention_head_dim: Union[int, tuple] = (5, 10, 20, 20)
    use_linear_projection: bool = True  # SD1.x attends through 1x1 convolutions, SD2 and SDXL through linear layers
    train_resize_to: Optional[int] = None  # short side before the training crop; None = the crop resolution itself
    xl_pipeline: bool = False      # model_index.json names a StableDiffusionXL* pipeline
    single_file: bool = False      # the pipeline also loads its original-layout single file (+ its config folder)
    # the registry key of a published salient ControlNet for this base (None: none is published, train one)
    published_controlnet: Optional[str] = None
    comfy_checkpoint: str = ""     # what to load with ComfyUI's Load Checkpoint for this base
    vae_overflows_in_fp16: bool = False  # its VAE needs fp32 (SDXL's)


BASES = {
    "sd2-inpainting": InpaintingBase(
        name="sd2-inpainting", title="Stable Diffusion 2 inpainting", context_dim=1024, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD20",
        diffusers_repo="stabilityai/stable-diffusion-2-inpainting", train_resize_to=768, single_file=True,
        published_controlnet="controlnet",
        comfy_checkpoint="512-inpainting-ema.safetensors from stabilityai/stable-diffusion-2-inpainting"),
    "sd15-inpainting": InpaintingBase(
        name="sd15-inpainting", title="Stable Diffusion 1.5 inpainting", context_dim=768, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD15",
        diffusers_repo="stable-diffusion-v1-5/stable-diffusion-inpainting", attention_head_dim=8,
        use_linear_projection=False, train_resize_to=768,
        comfy_checkpoint="sd-v1-5-inpainting.ckpt from stable-diffusion-v1-5/stable-diffusion-inpainting"),
    "sdxl-inpainting": InpaintingBase(
        name="sdxl-inpainting", title="Stable Diffusion XL inpainting", context_dim=2048, added_conditioning="text_time",
        resolution=1024, vae_scaling_factor=0.13025, prediction_type="epsilon", comfy_model="SDXL",
        diffusers_repo="diffusers/stable-diffusion-xl-1.0-inpainting-0.1", text_encoders=2,
        attention_head_dim=(5, 10, 20), xl_pipeline=True, vae_overflows_in_fp16=True,
        comfy_checkpoint="diffusers/stable-diffusion-xl-1.0-inpainting-0.1 as a single-file checkpoint"),
}
DEFAULT_BASE = "sd2-inpainting"


# ---------------------------------------------------------------------------------------------------------------
# what ComfyUI recognises
# ---------------------------------------------------------------------------------------------------------------
SDXL_ADDED_INPUT_WIDTH = 2816  # SDXL's y: pooled text embedding (1280) + 6 size/crop time ids x 256


@dataclass(frozen=True)
class ComfyFamily:
    """A model family as ComfyUI 0.3.64's ``comfy/supported_models.py`` matches it (``unet_config``: first block width
    320, context width, linear attention projections, width of the added conditioning ``y`` and, where it says so, the
    transformer depth of every input block), the head rule it then applies (``unet_extra_config``), and the base of
    ours whose text encoders and added conditioning it shares. The middle block is not matched: ComfyUI builds it
    with or without attention, as the weights show."""

    name: str                      # ComfyUI's class name
    base: str                      # our base of the same context and conditioning
    context_dim: int
    linear: bool
    adm_in_channels: Optional[int]
    depths: Optional[tuple] = None  # transformer depth per input block (resnet), None = not matched
    heads: Optional[int] = None     # a fixed head count everywhere (SD1.5) ...
    head_channels: Optional[int] = None  # ... or a fixed width per head (all others)
    model_channels: int = 320


# In ComfyUI's matching order. The SDXL family's smaller relatives differ from SDXL only in transformer depths.
COMFY_FAMILIES = (
    ComfyFamily("SD15", "sd15-inpainting", 768, linear=False, adm_in_channels=None, heads=8),
    ComfyFamily("SD20", "sd2-inpainting", 1024, linear=True, adm_in_channels=None, head_channels=64),
    ComfyFamily("SDXL", "sdxl-inpainting", 2048, linear=True, adm_in_channels=SDXL_ADDED_INPUT_WIDTH,
                depths=(0, 0, 2, 2, 10, 10), head_channels=64),
    ComfyFamily("SSD1B", "sdxl-inpainting", 2048, linear=True, adm_in_channels=SDXL_ADDED_INPUT_WIDTH,
                depths=(0, 0, 2, 2, 4, 4), head_channels=64),
    ComfyFamily("KOALA_700M", "sdxl-inpainting", 2048, linear=True, adm_in_channels=SDXL_ADDED_INPUT_WIDTH,
                depths=(0, 2, 5), head_channels=64),
    ComfyFamily("KOALA_1B", "sdxl-inpainting", 2048, linear=True, adm_in_channels=SDXL_ADDED_INPUT_WIDTH,
                depths=(0, 2, 6), head_channels=64),
    ComfyFamily("Segmind_Vega", "sdxl-inpainting", 2048, linear=True, adm_in_channels=SDXL_ADDED_INPUT_WIDTH,
                depths=(0, 0, 1, 1, 2, 2), head_channels=64),
)


def comfy_family_for(*, model_channels: Optional[int], context_dim: Optional[int], linear: bool,
                     adm_in_channels: Optional[int], depths: Optional[tuple]) -> Optional[ComfyFamily]:
    """The first family ComfyUI would match for these properties of a UNet or ControlNet, or None."""
    for family in COMFY_FAMILIES:
        if (model_channels == family.model_channels and context_dim == family.context_dim
                and bool(linear) == family.linear and adm_in_channels == family.adm_in_channels
                and (family.depths is None or tuple(depths or ()) == family.depths)):
            return family
    return None


def comfy_family_names() -> str:
    return ", ".join(f.name for f in COMFY_FAMILIES)


# ---------------------------------------------------------------------------------------------------------------
# a base by name
# ---------------------------------------------------------------------------------------------------------------
def get_base(name: str) -> InpaintingBase:
    try:
        return BASES[name]
    except KeyError:
        raise InputError(f"unknown base {name!r}: choose one of {', '.join(BASES)}") from None


def as_base(base: Union[str, InpaintingBase, None]) -> InpaintingBase:
    """An :class:`InpaintingBase` from its name (or itself); None gives the default base."""
    if isinstance(base, InpaintingBase):
        return base
    return get_base(base or DEFAULT_BASE)


# ---------------------------------------------------------------------------------------------------------------
# which base: from a config, a state dict, a folder, a model path
# ---------------------------------------------------------------------------------------------------------------
def base_for_unet_config(config) -> InpaintingBase:
    """The base a (diffusers) UNet or ControlNet config belongs to, from its context width and added conditioning."""
    width = config.get("cross_attention_dim")
    added = config.get("addition_embed_type")
    for base in BASES.values():
        if base.context_dim == width and base.added_conditioning == added:
            return base
    raise InputError(f"no known inpainting base has a {width}-wide context"
                     + (f" with {added!r} added conditioning" if added else "") + f": known bases are {', '.join(BASES)}")


def base_for_structure(*, added_conditioning: Optional[str], use_linear_projection: Optional[bool],
                       xl_pipeline: bool = False) -> InpaintingBase:
    """The base of a model whose widths are none of the known ones (a pruned or a test model), from its structure
    alone: SDXL's added conditioning (or an XL pipeline), else SD2's linear attention projections, else SD1.5."""
    if added_conditioning == "text_time" or xl_pipeline:
        return BASES["sdxl-inpainting"]
    return BASES["sd2-inpainting"] if use_linear_projection in (True, None) else BASES["sd15-inpainting"]


def base_for_config(config: Mapping) -> InpaintingBase:
    """The base of a UNet or ControlNet config: its widths when they are a released base's, else its structure."""
    try:
        return base_for_unet_config(config)
    except InputError:  # widths of no released model (a pruned or test model): judge by structure
        return base_for_structure(added_conditioning=config.get("addition_embed_type"),
                                  use_linear_projection=config.get("use_linear_projection", False))


def has_added_embedding(keys) -> bool:
    """Whether state-dict keys hold SDXL's added-conditioning embedding (diffusers ``add_embedding.*``, ComfyUI/ldm
    ``label_emb.*``), also under a prefix such as ``control_model.``."""
    return any(k.startswith(("add_embedding.", "label_emb.")) or ".add_embedding." in k or ".label_emb." in k
               for k in keys)


def base_for_state_dict(state_dict) -> InpaintingBase:
    """The released base a ControlNet (or UNet) state dict was built for, read from its weights alone: the width of
    its cross-attention keys (``attn2.to_k``, diffusers names; also ComfyUI's) and whether it has the added-conditioning
    embedding SDXL uses. :class:`InputError` for widths of no released base (see :func:`base_from_weights`)."""
    width = None
    for key, tensor in state_dict.items():
        if key.endswith("attn2.to_k.weight"):
            width = int(tensor.shape[1])
            break
    added = "text_time" if has_added_embedding(state_dict) else None
    return base_for_unet_config({"cross_attention_dim": width, "addition_embed_type": added})


def base_from_weights(state_dict: Mapping) -> InpaintingBase:
    """The base a ControlNet (or UNet) state dict -- diffusers or ComfyUI keys, real or ``meta`` tensors (shapes
    read from a safetensors header) -- is for: its context width and added conditioning when they are a released
    base's, else its structure (added conditioning -> SDXL, linear attention projections -> SD2, convolutional ones
    -> SD1.5)."""
    try:
        return base_for_state_dict(state_dict)
    except InputError:
        proj = next((v for k, v in state_dict.items() if k.endswith("proj_in.weight")), None)
        added = "text_time" if has_added_embedding(state_dict) else None
        return base_for_structure(added_conditioning=added,
                                  use_linear_projection=None if proj is None else len(proj.shape) == 2)


def base_of_controlnet_config(config: Mapping) -> Optional[InpaintingBase]:
    """The base a ControlNet config is for: its ``salient_base`` record, else its widths or structure; None when the
    config has no context width at all."""
    if config.get(BASE_RECORD) in BASES:
        return BASES[config[BASE_RECORD]]
    if config.get("cross_attention_dim") is None:
        return None
    return base_for_config(config)


def _read_config(path: str) -> dict:
    from .networks.checkpoint_io import read_json_object  # a leaf helper (JSON only); it imports nothing of ours

    return read_json_object(path, error=InputError)


def _pipeline_class(folder: str) -> Optional[str]:
    index = os.path.join(folder, "model_index.json")
    return _read_config(index).get("_class_name") if os.path.isfile(index) else None


def base_for_pretrained_folder(folder: str, requested: Union[str, InpaintingBase, None] = None) -> InpaintingBase:
    """The base of a diffusers inpainting model folder, read from ``unet/config.json`` (context width, added
    conditioning, 9 input channels, projection kind) and ``model_index.json`` (the pipeline class). ``requested``
    (``--base``): the base the user named; a folder of another base is an :class:`InputError`, as is a UNet that
    is not an inpainting one."""
    config_path = os.path.join(folder, "unet", "config.json")
    if not os.path.isfile(config_path):
        raise InputError(f"{folder!r} has no unet/config.json: it is not a diffusers model folder")
    config = _read_config(config_path)
    if config.get("in_channels") != 9:
        raise InputError(f"the UNet in {folder!r} takes {config.get('in_channels')} input channels; the salient "
                         "ControlNet needs an inpainting UNet (9: noisy latents, mask, masked-image latents)")
    pipeline = _pipeline_class(folder) or ""
    try:
        found = base_for_unet_config(config)
    except InputError:  # widths of no released model: judge by structure
        found = base_for_config(config)
        log.info("%s: a %s-wide UNet is none of the released bases; its structure is %s's", folder,
                 config.get("cross_attention_dim"), found.title)
    if pipeline and ("XL" in pipeline) != found.xl_pipeline:
        raise InputError(f"{folder!r} is inconsistent: model_index.json names {pipeline} but unet/config.json "
                         f"describes a {found.title} UNet")
    if requested is not None and as_base(requested).name != found.name:
        wanted = as_base(requested)
        raise InputError(f"--base {wanted.name} was given, but {folder!r} holds a {found.title} model ({found.name}: "
                         f"unet/config.json has a {config.get('cross_attention_dim')}-wide context"
                         + (f" with {config.get('addition_embed_type')!r} added conditioning"
                            if config.get("addition_embed_type") else "") + "); drop --base or pass the right folder")
    return found


# key prefixes of the text encoders in original-layout single files, one per base
_SINGLE_FILE_TEXT_KEYS = (
    ("conditioner.embedders.1.", "sdxl-inpainting"),  # SDXL: two encoders under conditioner.embedders.*
    ("cond_stage_model.model.", "sd2-inpainting"),  # SD2: OpenCLIP
    ("cond_stage_model.transformer.", "sd15-inpainting"),  # SD1.x: OpenAI CLIP (transformers layout)
)


def safetensors_keys(path: str) -> list[str]:
    """The tensor names of a safetensors file (header only); [] when it is not readable as one."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            return list(fh.keys())
    except Exception:  # not readable as safetensors: the loader reports it with its own message
        return []


def base_of_model(path: Union[str, os.PathLike]) -> InpaintingBase:
    """The base of an inpainting model path (diffusers folder or original-layout single file), no weights read.

    A ``.ckpt`` pickle cannot be read without loading it whole; it is taken for SD2 (the only base whose single file
    the pipeline loads)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return base_for_pretrained_folder(path)
    if path.lower().endswith((".safetensors", ".sft")) and os.path.isfile(path):
        keys = safetensors_keys(path)
        for prefix, name in _SINGLE_FILE_TEXT_KEYS:
            if any(k.startswith(prefix) for k in keys):
                return BASES[name]
    return BASES[DEFAULT_BASE]


# ---------------------------------------------------------------------------------------------------------------
# a ControlNet of another base: one message, with the way to get one that fits
# ---------------------------------------------------------------------------------------------------------------
TRAIN_COMMAND = "python -m salient_background training train --base {name} ..."
EXPORT_COMMAND = "python -m salient_background training export <checkpoint> <folder>"


def how_to_get_controlnet(base: Union[str, InpaintingBase]) -> str:
    """Where a salient ControlNet for ``base`` comes from: the registry's download of the published one, or -- for
    a base none is published for -- the training and export commands."""
    base = as_base(base)
    if base.published_controlnet:
        from .model_files.model_registry import where_to_get

        return f"The published salient ControlNet for {base.title}: " + where_to_get(base.published_controlnet)
    return (f"A salient ControlNet for {base.title} is not published (the paper's is for Stable Diffusion 2 "
            f"inpainting): it can only be trained, with {TRAIN_COMMAND.format(name=base.name)}, then exported with "
            f"{EXPORT_COMMAND}.")


def how_to_get_any_controlnet() -> str:
    """Where a salient ControlNet comes from when its base is not known yet (a file that is not there): per base,
    the bases that can only be trained first."""
    trained = [b for b in BASES.values() if not b.published_controlnet]
    text = ""
    if trained:
        text = (f"A salient ControlNet for {' or '.join(b.title for b in trained)} is not published: it can only be "
                f"trained, with {TRAIN_COMMAND.format(name='<' + '|'.join(b.name for b in trained) + '>')}, then "
                f"exported into the ControlNet folder with {EXPORT_COMMAND}. ")
    return text + " ".join(how_to_get_controlnet(b) for b in BASES.values() if b.published_controlnet)


def base_mismatch_message(controlnet_base: InpaintingBase, model_base: Optional[InpaintingBase], *,
                          controlnet: str = "the ControlNet", model: str = "the base model",
                          model_text: Optional[str] = None, fix: Optional[str] = None) -> str:
    """The one "ControlNet of another base" message: ``{controlnet} is for <base>, but {model} is <base>: {fix}``.
    ``model_text`` describes the model when its base is unknown; ``fix`` replaces the default advice (use the base
    model the ControlNet was trained on, or get a ControlNet for the model's base: :func:`how_to_get_controlnet`)."""
    described = model_text or (model_base.title if model_base is not None else "another model")
    if fix is None:
        fix = ("a salient ControlNet only steers the inpainting UNet it was trained on: give the base model it was "
               f"trained on ({controlnet_base.title}), or a ControlNet for "
               + (f"{model_base.title}. {how_to_get_controlnet(model_base)}" if model_base is not None
                  else "that model."))
    return f"{controlnet} is for {controlnet_base.title}, but {model} is {described}: {fix}"
