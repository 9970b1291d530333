"""What a diffusers ControlNet config must satisfy for ComfyUI to build the ControlNet it describes.

ComfyUI does not read a ControlNet's config. It renames the weights to its own (ldm) layout and rebuilds the network
from what the weights show, filling in what they cannot show from the *model family* it recognises. So a config that
diffusers builds happily can still be one ComfyUI rebuilds differently (wrong heads, wrong hint encoder) or not at
all. The rules below were learned from ComfyUI 0.3.x (its ControlNet class, its ControlNet loader and its model
detection) and are stated here in our own words:

1. **Hint encoder.** ComfyUI's hint encoder has fixed widths: 16, 16, 32, 32, 96, 96, 256 channels, then a conv to
   the first block's width. Only the number of hint channels is read from the weights. So
   ``conditioning_embedding_out_channels`` must be (16, 32, 96, 256); the salient hint has 3 channels.
2. **Model family.** The family is recognised from the first block's width (320), the context width, whether the
   attention projections are linear, the width of the added conditioning and, for the SDXL family, the transformer
   depth of every input block. The families are listed once, in :data:`models.bases.COMFY_FAMILIES`: SD1.5 (768-wide
   context, convolutional projections), SD2 (1024, linear), SDXL (2048, linear, depths 0/2/10 per level, added
   conditioning 2816 wide) and its smaller relatives SSD-1B (0/2/4), Segmind-Vega (0/1/2) and KOALA. A config
   matching none is not built.
3. **Heads.** Head counts are not in the weights; the family gives them: SD1.5 has 8 heads at every level, the
   others 64 channels per head. diffusers' ``attention_head_dim`` (which holds head *counts*) must say the same.
4. **Added conditioning.** SD1.5 and SD2 have none. SDXL's is the ``text_time`` embedding: the 1280-wide pooled text
   embedding plus six 256-wide size/crop features, 2816 inputs, which ComfyUI computes itself -- so
   ``addition_time_embed_dim`` must be 256 and ``projection_class_embeddings_input_dim`` 2816. Class embeddings and
   other added-conditioning kinds are not built.
5. **Input.** The salient ControlNet receives the inpainting input, 9 channels (read from the weights; ComfyUI's
   wrapper in this pack feeds them).
6. **Fixed building blocks.** ComfyUI's blocks have no switches for: the activation (SiLU), group norm (32 groups,
   eps 1e-5), the time embedding (sinusoidal, cosine first, no shift, no extra projection), the resnet time shift
   ("default"), cross-attention everywhere it attends, downsampling convs with padding 1, a middle-block scale of 1, the hint's RGB channel order and unpooled outputs. The same number of
   resnets at every level, with attention exactly at the levels the family has it. The middle block is built as
   the weights show it, with attention (``UNetMidBlock2DCrossAttn``) or without (``UNetMidBlock2D``, Segmind-Vega's).
"""
from __future__ import annotations

from typing import Mapping, Optional

from ..bases import SDXL_ADDED_INPUT_WIDTH, ComfyFamily, comfy_family_for, comfy_family_names

COMFY_HINT_WIDTHS = (16, 32, 96, 256)
SALIENT_IN_CHANNELS = 9
SALIENT_HINT_CHANNELS = 3
SDXL_ADDED_TIME_WIDTH = 256
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")  # with or without attention: ComfyUI builds either
_FIXED = (  # (config key, the only value ComfyUI builds, a missing key counts as the diffusers default)
    ("act_fn", "silu"), ("norm_num_groups", 32), ("norm_eps", 1e-5), ("flip_sin_to_cos", True), ("freq_shift", 0),
    ("resnet_time_scale_shift", "default"), ("only_cross_attention", False), ("downsample_padding", 1),
    ("mid_block_scale_factor", 1), ("class_embed_type", None), ("encoder_hid_dim", None),
    ("controlnet_conditioning_channel_order", "rgb"), ("global_pool_conditions", False),
)


def _per_level(value, levels: int) -> list:
    if value is None:
        return [None] * levels
    return [value] * levels if isinstance(value, (int, float)) else list(value)


def _depths(config: Mapping) -> list[int]:
    """Transformer depth per level (0 where a level has no attention)."""
    types = list(config.get("down_block_types") or [])
    depth = _per_level(config.get("transformer_layers_per_block", 1), len(types))
    return [int(d) if "CrossAttn" in t else 0 for t, d in zip(types, depth)]


def _added_width(config: Mapping) -> Optional[int]:
    return config.get("projection_class_embeddings_input_dim") if config.get("addition_embed_type") else None


def _input_block_depths(config: Mapping) -> list[int]:
    """Transformer depth per input block (resnet), as ComfyUI's model detection lists them."""
    per_level = config.get("layers_per_block", 2)
    per_level = per_level if isinstance(per_level, int) else 0
    return [d for d in _depths(config) for _ in range(per_level)]


def comfy_model_family(config: Mapping) -> Optional[ComfyFamily]:
    """The ComfyUI model family (:data:`models.bases.COMFY_FAMILIES`) a UNet or ControlNet config is recognised as,
    or None."""
    channels = list(config.get("block_out_channels") or [])
    return comfy_family_for(model_channels=channels[0] if channels else None,
                            context_dim=config.get("cross_attention_dim"),
                            linear=bool(config.get("use_linear_projection", False)), adm_in_channels=_added_width(config),
                            depths=tuple(_input_block_depths(config)))


def comfy_family(config: Mapping) -> Optional[str]:
    """The name of the ComfyUI model family (``SD15``, ``SD20``, ``SDXL``, ``SSD1B``, ``Segmind_Vega``...) a UNet or
    ControlNet config is recognised as, or None. A config of none (a test model, a pruned model) cannot be used in
    ComfyUI at all."""
    family = comfy_model_family(config)
    return family.name if family is not None else None


def _head_problems(config: Mapping, family: ComfyFamily) -> list[str]:
    channels = list(config["block_out_channels"])
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim"), len(channels))
    want = [family.heads or c // family.head_channels for c in channels]
    bad = [f"level {i}: {h} heads, ComfyUI builds {w}" for i, (h, w, d) in enumerate(zip(heads, want, _depths(config)))
           if d and h is not None and int(h) != w]
    return ["attention heads differ from the family's (" + "; ".join(bad) + ")"] if bad else []


def _structure_problems(config: Mapping) -> list[str]:
    problems = []
    widths = tuple(int(c) for c in config.get("conditioning_embedding_out_channels") or ())
    if widths != COMFY_HINT_WIDTHS:
        problems.append(f"conditioning_embedding_out_channels is {list(widths)}; ComfyUI's hint encoder is fixed at "
                        f"{list(COMFY_HINT_WIDTHS)}")
    if config.get("conditioning_channels", 3) != SALIENT_HINT_CHANNELS:
        problems.append(f"conditioning_channels is {config.get('conditioning_channels')}; the salient hint has 3")
    if config.get("in_channels") != SALIENT_IN_CHANNELS:
        problems.append(f"in_channels is {config.get('in_channels')}; the salient ControlNet takes the 9-channel "
                        "inpainting input")
    if not isinstance(config.get("layers_per_block", 2), int):
        problems.append("layers_per_block differs per level; ComfyUI builds the same number of resnets everywhere")
    for key, value in _FIXED:
        if key in config and config[key] != value:
            problems.append(f"{key} is {config[key]!r}; ComfyUI only builds {value!r}")
    if config.get("mid_block_type", MID_BLOCKS[0]) not in MID_BLOCKS:
        problems.append(f"mid_block_type is {config['mid_block_type']!r}; ComfyUI only builds {' or '.join(MID_BLOCKS)}")
    added = config.get("addition_embed_type")
    if added not in (None, "text_time"):
        problems.append(f"addition_embed_type {added!r} is not built by ComfyUI (only SDXL's 'text_time')")
    elif added == "text_time" and (config.get("addition_time_embed_dim") != SDXL_ADDED_TIME_WIDTH
                                   or config.get("projection_class_embeddings_input_dim") != SDXL_ADDED_INPUT_WIDTH):
        problems.append(f"the text_time embedding must be SDXL's (addition_time_embed_dim {SDXL_ADDED_TIME_WIDTH}, "
                        f"projection_class_embeddings_input_dim {SDXL_ADDED_INPUT_WIDTH}): ComfyUI computes its "
                        f"inputs itself; got {config.get('addition_time_embed_dim')} and "
                        f"{config.get('projection_class_embeddings_input_dim')}")
    return problems


def comfy_buildable_problems(config: Mapping) -> list[str]:
    """Why ComfyUI would not build the ControlNet this diffusers config describes as described; [] when it would."""
    problems = _structure_problems(config)
    family = comfy_model_family(config)
    if family is None:
        problems.append(
            f"ComfyUI recognises no model family in it (first block {list(config.get('block_out_channels') or [])[:1]}, "
            f"context {config.get('cross_attention_dim')}, linear projection "
            f"{bool(config.get('use_linear_projection', False))}, added conditioning {_added_width(config)}, "
            f"transformer depths {_depths(config)}); it knows {comfy_family_names()}")
    else:
        problems += _head_problems(config, family)
    return problems
