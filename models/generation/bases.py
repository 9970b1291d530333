"""The inpainting bases the salient ControlNet can be built on, each described once.

The method is base-agnostic: the salient ControlNet is a copy of an inpainting UNet's encoder (9 input channels:
4 noisy latents + 1 repaint mask + 4 masked-image latents) whose hint is the soft inverted object mask. What differs
between bases is listed here and read by the trainer, the export, the ControlNet loaders (ComfyUI and diffusers), the
pipeline and ``generate``: nothing else in the pack hard-codes a base.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import InputError
from ..networks.checkpoint_io import read_json_object


def _read_config(path: str) -> dict:
    return read_json_object(path, error=InputError)

log = logging.getLogger("salient_background")


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


BASES = {
    "sd2-inpainting": InpaintingBase(
        name="sd2-inpainting", title="Stable Diffusion 2 inpainting", context_dim=1024, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD20",
        diffusers_repo="stabilityai/stable-diffusion-2-inpainting", train_resize_to=768),
    "sd15-inpainting": InpaintingBase(
        name="sd15-inpainting", title="Stable Diffusion 1.5 inpainting", context_dim=768, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD15",
        diffusers_repo="stable-diffusion-v1-5/stable-diffusion-inpainting", attention_head_dim=8,
        use_linear_projection=False, train_resize_to=768),
    "sdxl-inpainting": InpaintingBase(
        name="sdxl-inpainting", title="Stable Diffusion XL inpainting", context_dim=2048, added_conditioning="text_time",
        resolution=1024, vae_scaling_factor=0.13025, prediction_type="epsilon", comfy_model="SDXL",
        diffusers_repo="diffusers/stable-diffusion-xl-1.0-inpainting-0.1", text_encoders=2,
        attention_head_dim=(5, 10, 20), xl_pipeline=True),
}
DEFAULT_BASE = "sd2-inpainting"


def get_base(name: str) -> InpaintingBase:
    try:
        return BASES[name]
    except KeyError:
        raise InputError(f"unknown base {name!r}: choose one of {', '.join(BASES)}") from None


def base_for_unet_config(config) -> InpaintingBase:
    """The base a (diffusers) UNet or ControlNet config belongs to, from its context width and added conditioning."""
    width = config.get("cross_attention_dim")
    added = config.get("addition_embed_type")
    for base in BASES.values():
        if base.context_dim == width and base.added_conditioning == added:
            return base
    raise InputError(f"no known inpainting base has a {width}-wide context"
                     + (f" with {added!r} added conditioning" if added else "") + f": known bases are {', '.join(BASES)}")


def base_for_state_dict(state_dict) -> InpaintingBase:
    """The base a ControlNet (or UNet) state dict was built for, read from its weights alone: the width of its
    cross-attention keys (``attn2.to_k``, diffusers names; ``attn2.to_k`` is also ComfyUI's) and whether it has the
    added-conditioning embedding SDXL uses (diffusers ``add_embedding.*``, ComfyUI/ldm ``label_emb.*``)."""
    width = None
    for key, tensor in state_dict.items():
        if key.endswith("attn2.to_k.weight"):
            width = int(tensor.shape[1])
            break
    added = "text_time" if has_added_embedding(state_dict) else None
    return base_for_unet_config({"cross_attention_dim": width, "addition_embed_type": added})


def has_added_embedding(keys) -> bool:
    """Whether state-dict keys hold SDXL's added-conditioning embedding (diffusers ``add_embedding.*``, ComfyUI/ldm
    ``label_emb.*``), also under a prefix such as ``control_model.``."""
    return any(k.startswith(("add_embedding.", "label_emb.")) or ".add_embedding." in k or ".label_emb." in k
               for k in keys)


def as_base(base: Union[str, InpaintingBase, None]) -> InpaintingBase:
    """An :class:`InpaintingBase` from its name (or itself); None gives the default base."""
    if isinstance(base, InpaintingBase):
        return base
    return get_base(base or DEFAULT_BASE)


def base_for_structure(*, added_conditioning: Optional[str], use_linear_projection: Optional[bool],
                       xl_pipeline: bool = False) -> InpaintingBase:
    """The base of a model whose widths are none of the known ones (a pruned or a test model), from its structure
    alone: SDXL's added conditioning (or an XL pipeline), else SD2's linear attention projections, else SD1.5."""
    if added_conditioning == "text_time" or xl_pipeline:
        return BASES["sdxl-inpainting"]
    return BASES["sd2-inpainting"] if use_linear_projection in (True, None) else BASES["sd15-inpainting"]




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
        found = base_for_structure(added_conditioning=config.get("addition_embed_type"),
                                   use_linear_projection=config.get("use_linear_projection", False))
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
