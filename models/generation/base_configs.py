"""The configs of the released full-size models of each inpainting base, as their diffusers folders hold them.

Only configs, no weights: they let the pack reason about the real models without having them -- count their
parameters on the ``meta`` device (the training memory plan), and check that the ControlNet the trainer would
create from each real UNet is one ComfyUI can build (the tests). Values are those of the ``unet/``, ``vae/``,
``text_encoder/`` (and ``text_encoder_2/``) configs of the repositories named in :mod:`models.bases`.
"""
from __future__ import annotations

import copy

from ..bases import InpaintingBase, as_base

_SD_UNET = {
    "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 9, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 512, "scaling_factor": 0.18215,
}
_CLIP_L = {  # OpenAI CLIP ViT-L/14 text tower (SD1.5; SDXL's first encoder)
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "hidden_act": "quick_gelu", "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
}
_CLIP_H = {  # OpenCLIP ViT-H/14 text tower as SD2 uses it (the last of 24 layers dropped)
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
    "hidden_act": "gelu", "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 512,
}
_CLIP_BIGG = {  # OpenCLIP ViT-bigG/14 text tower with its projection (SDXL's second encoder, gives the pooled embedding)
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "hidden_act": "gelu", "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280,
}

FULL_SIZE = {
    "sd2-inpainting": {
        "unet": {**_SD_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                 "use_linear_projection": True},
        "vae": _VAE,
        "text_encoders": [("CLIPTextModel", _CLIP_H)],
    },
    "sd15-inpainting": {
        "unet": {**_SD_UNET, "attention_head_dim": 8, "cross_attention_dim": 768},
        "vae": _VAE,
        "text_encoders": [("CLIPTextModel", _CLIP_L)],
    },
    "sdxl-inpainting": {
        "unet": {
            **_SD_UNET, "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
            "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
        },
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoders": [("CLIPTextModel", _CLIP_L), ("CLIPTextModelWithProjection", _CLIP_BIGG)],
    },
}


def full_size_configs(base) -> dict:
    """{"unet": config, "vae": config, "text_encoders": [(transformers class name, config), ...]} of ``base``."""
    base: InpaintingBase = as_base(base)
    return copy.deepcopy(FULL_SIZE[base.name])
