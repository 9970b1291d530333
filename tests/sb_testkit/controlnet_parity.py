"""A tiny salient ControlNet that ComfyUI can load too, its inputs, and the diffusers reference outputs.

ComfyUI's ldm ``cldm.ControlNet`` hard-codes what SD models use: 32 GroupNorm groups and, for a model it does not
recognise as a known family, a head size of 64 (``supported_models_base.BASE``). So the tiny model for the
ComfyUI-vs-diffusers parity has 64/128 channels and 1/2 heads (head size 64), 32 norm groups, 9 input channels,
a 3-channel hint and the real conditioning embedding (16, 32, 96, 256); every tensor is random (``randomize_all_tensors``: a fresh
``from_unet`` ControlNet has zero output convs and would make parity trivial).

The ComfyUI side's outputs are pinned in ``tests/data/controlnet/parity_tiny.npz`` (written by
``tests/integration/test_controlnet_comfyui.py`` where ComfyUI exists); CI recomputes the diffusers side and
compares with them.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .diffusers_models import randomize_all_tensors, tiny_unet_config

PARITY_SEED = 1234
PARITY_CROSS_ATTENTION_DIM = 32
GOLDEN_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "controlnet", "parity_tiny.npz")
COMFY_KEYS_PATH = os.path.join(os.path.dirname(GOLDEN_PATH), "comfy_sd2_controlnet_keys.json")


def parity_unet_config() -> dict:
    cfg = tiny_unet_config()
    cfg.update(
        block_out_channels=(64, 128),
        attention_head_dim=(1, 2),  # head counts (SD2 naming): head size 64 as ComfyUI assumes
        norm_num_groups=32,
        cross_attention_dim=PARITY_CROSS_ATTENTION_DIM,
    )
    return cfg


def build_parity_controlnet(seed: int = PARITY_SEED):
    from diffusers import UNet2DConditionModel

    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**parity_unet_config())
    # ComfyUI's cldm hard-codes the hint embedding's channels (16, 32, 96, 256), as the real model has them
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256))
    return randomize_all_tensors(controlnet, seed + 1, std=0.05).eval()


def parity_inputs(seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """x (4 noisy latent channels), c_concat (mask + masked-image latents), hint [0,1], context, timestep."""
    g = torch.Generator().manual_seed(seed + 7)
    b, h, w = 2, 8, 8
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.5).float()
    return {
        "x": torch.randn(b, 4, h, w, generator=g),
        "c_concat": torch.cat([mask, torch.randn(b, 4, h, w, generator=g)], dim=1),
        "hint": torch.rand(b, 3, h * 8, w * 8, generator=g),
        "context": torch.randn(b, 5, PARITY_CROSS_ATTENTION_DIM, generator=g),
        "timesteps": torch.tensor([999.0, 321.0]),
    }


def weights_fingerprint(state_dict) -> float:
    """Sum of |w| over all tensors: tells 'the random weights changed' apart from 'the model changed'."""
    return float(sum(v.double().abs().sum() for v in state_dict.values()))


@torch.no_grad()
def diffusers_residuals(controlnet, inputs) -> dict[str, np.ndarray]:
    """``{"output_i": ..., "middle_0": ...}`` from diffusers, in ComfyUI's naming (down residual i = zero conv i)."""
    sample = torch.cat([inputs["x"], inputs["c_concat"]], dim=1)
    down, mid = controlnet(
        sample, inputs["timesteps"], encoder_hidden_states=inputs["context"], controlnet_cond=inputs["hint"],
        conditioning_scale=1.0, return_dict=False,
    )
    out = {f"output_{i}": d.float().numpy() for i, d in enumerate(down)}
    out["middle_0"] = mid.float().numpy()
    return out


def comfy_residuals_to_arrays(control: dict) -> dict[str, np.ndarray]:
    out = {f"output_{i}": t.float().cpu().numpy() for i, t in enumerate(control["output"])}
    out["middle_0"] = control["middle"][0].float().cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------------------------
# the other bases at full width: SD1.5 (ComfyUI detects SD15: 8 heads, convolutional projections) and an SDXL-family
# ControlNet (ComfyUI detects Segmind_Vega: SDXL's levels and label_emb, transformer depth 0/1/2, a middle block
# without attention) -- ComfyUI's head layout comes from the family it detects, so these need the real widths.
# ---------------------------------------------------------------------------------------------------------------
def _without_private(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def sd15_controlnet_config() -> dict:
    """The salient ControlNet cloned from SD1.5 inpainting's UNet (stable-diffusion-v1-5/stable-diffusion-inpainting)."""
    from salient_background.models.networks.controlnet_checkpoint import SD2_SALIENT_CONTROLNET_CONFIG

    cfg = _without_private(SD2_SALIENT_CONTROLNET_CONFIG)
    cfg.update(attention_head_dim=8, cross_attention_dim=768, use_linear_projection=False)
    return cfg


def sdxl_controlnet_config() -> dict:
    """The salient ControlNet cloned from SDXL inpainting's UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1)."""
    cfg = sd15_controlnet_config()
    cfg.update(
        block_out_channels=[320, 640, 1280], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    return cfg


def vega_controlnet_config() -> dict:
    """SDXL's family at Segmind-Vega's depth (transformers 0/1/2 per level, middle block without attention)."""
    cfg = sdxl_controlnet_config()
    cfg.update(transformer_layers_per_block=[1, 1, 2], mid_block_type="UNetMidBlock2D")
    return cfg


BASE_PARITY_CONFIGS = {"sd15-inpainting": sd15_controlnet_config, "sdxl-inpainting": vega_controlnet_config}
SDXL_POOLED_DIM = 1280


def build_base_controlnet(base: str, seed: int = PARITY_SEED, std: float = 0.02):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    return randomize_all_tensors(ControlNetModel(**BASE_PARITY_CONFIGS[base]()), seed + 1, std=std).eval()


def base_parity_inputs(base: str, seed: int = PARITY_SEED) -> dict[str, torch.Tensor]:
    """The parity inputs at the base's context width; SDXL adds the pooled text embedding and the 6 time ids
    (original size, crop top-left, target size) that make its added conditioning."""
    inputs = parity_inputs(seed)
    g = torch.Generator().manual_seed(seed + 11)
    width = BASE_PARITY_CONFIGS[base]()["cross_attention_dim"]
    inputs["context"] = torch.randn(2, 5, width, generator=g)
    if base == "sdxl-inpainting":
        inputs["text_embeds"] = torch.randn(2, SDXL_POOLED_DIM, generator=g)
        inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1344.0, 16.0, 8.0, 1024.0, 1024.0]])
    return inputs


@torch.no_grad()
def diffusers_base_residuals(controlnet, inputs) -> dict[str, np.ndarray]:
    """Like :func:`diffusers_residuals`, passing SDXL's added conditioning when the inputs have it."""
    sample = torch.cat([inputs["x"], inputs["c_concat"]], dim=1)
    added = {k: inputs[k] for k in ("text_embeds", "time_ids") if k in inputs} or None
    down, mid = controlnet(
        sample, inputs["timesteps"], encoder_hidden_states=inputs["context"], controlnet_cond=inputs["hint"],
        conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False,
    )
    out = {f"output_{i}": d.float().numpy() for i, d in enumerate(down)}
    out["middle_0"] = mid.float().numpy()
    return out


def comfy_keys_path(base: str) -> str:
    """Where the integration run pins ComfyUI's key names/shapes for a full-size ControlNet of ``base``."""
    short = base.split("-")[0]
    return os.path.join(os.path.dirname(GOLDEN_PATH), f"comfy_{short}_controlnet_keys.json")


FULL_SIZE_CONFIGS = {"sd15-inpainting": sd15_controlnet_config, "sdxl-inpainting": sdxl_controlnet_config}
