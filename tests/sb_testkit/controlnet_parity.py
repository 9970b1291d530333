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
