"""The inpainting bases the salient ControlNet can be built on, each described once.

The method is base-agnostic: the salient ControlNet is a copy of an inpainting UNet's encoder (9 input channels:
4 noisy latents + 1 repaint mask + 4 masked-image latents) whose hint is the soft inverted object mask. What differs
between bases is listed here and read by the trainer, the export, the ControlNet loaders (ComfyUI and diffusers), the
pipeline and ``generate``: nothing else in the pack hard-codes a base.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import InputError


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


BASES = {
    "sd2-inpainting": InpaintingBase(
        name="sd2-inpainting", title="Stable Diffusion 2 inpainting", context_dim=1024, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD20",
        diffusers_repo="stabilityai/stable-diffusion-2-inpainting"),
    "sd15-inpainting": InpaintingBase(
        name="sd15-inpainting", title="Stable Diffusion 1.5 inpainting", context_dim=768, added_conditioning=None,
        resolution=512, vae_scaling_factor=0.18215, prediction_type="epsilon", comfy_model="SD15",
        diffusers_repo="stable-diffusion-v1-5/stable-diffusion-inpainting"),
    "sdxl-inpainting": InpaintingBase(
        name="sdxl-inpainting", title="Stable Diffusion XL inpainting", context_dim=2048, added_conditioning="text_time",
        resolution=1024, vae_scaling_factor=0.13025, prediction_type="epsilon", comfy_model="SDXL",
        diffusers_repo="diffusers/stable-diffusion-xl-1.0-inpainting-0.1", text_encoders=2),
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
    added = "text_time" if any(k.startswith(("add_embedding.", "label_emb.")) for k in state_dict) else None
    return base_for_unet_config({"cross_attention_dim": width, "addition_embed_type": added})
