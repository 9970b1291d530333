"""Tiny random inpainting models of every base, saved in the REAL diffusers folder layout of each.

* ``sd15-inpainting``: ``stable-diffusion-v1-5/stable-diffusion-inpainting`` in miniature -- a 9-input-channel UNet
  attending through 1x1 convolutions (``use_linear_projection`` false) with one head count for all levels, one CLIP
  text encoder (quick-GELU, as OpenAI's CLIP), the VAE, the toy tokenizer, PNDM scheduler, ``model_index.json``
  naming ``StableDiffusionInpaintPipeline``.
* ``sdxl-inpainting``: ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` in miniature -- a UNet with
  ``addition_embed_type`` "text_time" (pooled text embedding + six size/crop time features), attention only on the
  inner levels with a deeper inner transformer, ``text_encoder/`` (``CLIPTextModel``) + ``text_encoder_2/``
  (``CLIPTextModelWithProjection``, whose projection is the pooled embedding) whose widths add up to the UNet's
  context width, ``tokenizer/`` + ``tokenizer_2/``, a VAE whose scaling factor is SDXL's 0.13025, Euler scheduler,
  ``model_index.json`` naming ``StableDiffusionXLInpaintPipeline``.
* ``sd2-inpainting``: the folder of :mod:`sb_testkit.diffusers_models` (the same one every other test uses).

Use :func:`tiny_base_folder` (built once per test session per base).
"""
from __future__ import annotations

import json
import os
import threading

import torch

from .diffusers_models import (TINY_IMAGE_SIZE, randomize_all_tensors, save_text_encoder_real_layout,
                               sd2_scheduler_config, tiny_sd_models, tiny_text_encoder_config, tiny_vae_config,
                               toy_bpe_vocabulary, write_toy_tokenizer)
from .files import process_temporary_folder

SDXL_TE1_WIDTH = 16
SDXL_TE2_WIDTH = 16  # also the pooled width
SDXL_TIME_WIDTH = 8
SDXL_VAE_SCALING_FACTOR = 0.13025


def tiny_sd15_unet_config() -> dict:
    return dict(sample_size=TINY_IMAGE_SIZE // 8, in_channels=9, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                attention_head_dim=4, use_linear_projection=False)


def tiny_sdxl_unet_config() -> dict:
    return dict(sample_size=TINY_IMAGE_SIZE // 8, in_channels=9, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                cross_attention_dim=SDXL_TE1_WIDTH + SDXL_TE2_WIDTH, transformer_layers_per_block=(1, 2),
                attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=SDXL_TIME_WIDTH,
                projection_class_embeddings_input_dim=SDXL_TE2_WIDTH + 6 * SDXL_TIME_WIDTH)


def _text_config(width: int, act: str, architecture: str):
    config = tiny_text_encoder_config()
    config.hidden_size, config.projection_dim, config.hidden_act = width, width, act
    config.num_attention_heads = 4
    config.architectures = [architecture]
    return config


def _model_index(folder: str, pipeline: str, parts: dict) -> None:
    index = {"_class_name": pipeline, "_diffusers_version": "0.21.0", **parts}
    with open(os.path.join(folder, "model_index.json"), "w") as fh:
        json.dump(dict(sorted(index.items())), fh, indent=2)


def _save_common(folder: str, unet, seed: int, scaling_factor: float, scheduler: dict) -> None:
    from diffusers import AutoencoderKL

    unet.save_pretrained(os.path.join(folder, "unet"))
    torch.manual_seed(seed + 1)
    AutoencoderKL(**{**tiny_vae_config(), "scaling_factor": scaling_factor}).save_pretrained(os.path.join(folder, "vae"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump(scheduler, fh, indent=2)


def save_tiny_sd15_folder(folder: str, seed: int = 10) -> str:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = randomize_all_tensors(UNet2DConditionModel(**tiny_sd15_unet_config()), seed)
    _save_common(folder, unet, seed, 0.18215, sd2_scheduler_config())
    torch.manual_seed(seed + 2)
    save_text_encoder_real_layout(CLIPTextModel(_text_config(32, "quick_gelu", "CLIPTextModel")).eval(),
                                  os.path.join(folder, "text_encoder"))
    write_toy_tokenizer(os.path.join(folder, "tokenizer"))
    _model_index(folder, "StableDiffusionInpaintPipeline", {
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False})
    return folder


def sdxl_scheduler_config() -> dict:
    return {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
            "use_karras_sigmas": False}


def save_tiny_sdxl_folder(folder: str, seed: int = 20) -> str:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = randomize_all_tensors(UNet2DConditionModel(**tiny_sdxl_unet_config()), seed)
    _save_common(folder, unet, seed, SDXL_VAE_SCALING_FACTOR, sdxl_scheduler_config())
    torch.manual_seed(seed + 2)
    save_text_encoder_real_layout(CLIPTextModel(_text_config(SDXL_TE1_WIDTH, "quick_gelu", "CLIPTextModel")).eval(),
                                  os.path.join(folder, "text_encoder"))
    torch.manual_seed(seed + 3)
    te2 = CLIPTextModelWithProjection(_text_config(SDXL_TE2_WIDTH, "gelu", "CLIPTextModelWithProjection")).eval()
    te2.save_pretrained(os.path.join(folder, "text_encoder_2"))
    write_toy_tokenizer(os.path.join(folder, "tokenizer"))
    write_toy_tokenizer(os.path.join(folder, "tokenizer_2"))
    _model_index(folder, "StableDiffusionXLInpaintPipeline", {
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False})
    return folder


_LOCK = threading.Lock()
_FOLDERS: dict[str, str] = {}
_ROOT: list = []


def tiny_base_folder(base: str) -> str:
    """The session-wide tiny model folder of ``base`` (built on first use)."""
    with _LOCK:
        if base == "sd2-inpainting":
            pass
        elif base not in _FOLDERS:
            if not _ROOT:
                _ROOT.append(process_temporary_folder("sb_tiny_bases_"))
            save = {"sd15-inpainting": save_tiny_sd15_folder, "sdxl-inpainting": save_tiny_sdxl_folder}[base]
            _FOLDERS[base] = save(os.path.join(_ROOT[0], base))
    return tiny_sd_models().si2_dir if base == "sd2-inpainting" else _FOLDERS[base]


__all__ = ["tiny_base_folder", "save_tiny_sd15_folder", "save_tiny_sdxl_folder", "toy_bpe_vocabulary"]
