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
   attention projections are linear, the width of the added conditioning and, for SDXL, the transformer depth of
   every level. The known families are SD1.5 (768-wide context, convolutional projections), SD2 (1024, linear) and
   SDXL (2048, linear, depths 0/2/10, added conditioning 2816 wide). A config matching none is not built.
3. **Heads.** Head counts are not in the weights; the family gives them: SD1.5 has 8 heads at every level, SD2 and
   SDXL have 64 channels per head. diffusers' ``attention_head_dim`` (which holds head *counts*) must say the same.
4. **Added conditioning.** SD1.5 and SD2 have none. SDXL's is the ``text_time`` embedding: the 1280-wide pooled text
   embedding plus six 256-wide size/crop features, 2816 inputs, which ComfyUI computes itself -- so
   ``addition_time_embed_dim`` must be 256 and ``projection_class_embeddings_input_dim`` 2816. Class embeddings and
   other added-conditioning kinds are not built.
5. **Input.** The salient ControlNet receives the inpainting input, 9 channels (read from the weights; ComfyUI's
   wrapper in this pack feeds them).
6. **Fixed building blocks.** ComfyUI's blocks have no switches for: the activation (SiLU), group norm (32 groups,
   eps 1e-5), the time embedding (sinusoidal, cosine first, no shift, no extra projection), the resnet time shift
   ("default"), cross-attention everywhere it attends, a cross-attention middle block, downsampling convs with
   padding 1, a middle-block scale of 1, the hint's RGB channel order and unpooled outputs. The same number of
   resnets at every level, with attention exactly at the levels the family has it.
"""
from __future__ import annotations

from typing import Mapping, Optional

COMFY_HINT_WIDTHS = (16, 32, 96, 256)
SALIENT_IN_CHANNELS = 9
SALIENT_HINT_CHANNELS = 3
SDXL_ADDED_TIME_WIDTH = 256
SDXL_ADDED_INPUT_WIDTH = 2816

# per family: what ComfyUI matches on, and the head rule it then applies
_FAMILIES = {
    "SD15": dict(context=768, linear=False, added=None, depths=None, heads=8, head_channels=None),
    "SD20": dict(context=1024, linear=True, added=None, depths=None, heads=None, head_channels=64),
    "SDXL": dict(context=2048, linear=True, added=SDXL_ADDED_INPUT_WIDTH, depths=(0, 2, 10), heads=None,
                 head_channels=64),
}
_FIXED = (  # (config key, the only value ComfyUI builds, a missing key counts as the diffusers default)
    ("act_fn", "silu"), ("norm_num_groups", 32), ("norm_eps", 1e-5), ("flip_sin_to_cos", True), ("freq_shift", 0),
    ("resnet_time_scale_shift", "default"), ("only_cross_attention", False), ("downsample_padding", 1),
    ("mid_block_scale_factor", 1), ("class_embed_type", None), ("encoder_hid_dim", None),
    ("controlnet_conditioning_channel_order", "rgb"), ("global_pool_conditions", False),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
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


def comfy_family(config: Mapping) -> Optional[str]:
    """The ComfyUI model family (``SD15``, ``SD20``, ``SDXL``) a UNet or ControlNet config is recognised as, or None.
    A config of none (a test model, a pruned model) cannot be used in ComfyUI at all."""
    channels = list(config.get("block_out_channels") or [])
    if not channels or channels[0] != 320:
        return None
    for name, family in _FAMILIES.items():
        if (config.get("cross_attention_dim") == family["context"]
                and bool(config.get("use_linear_projection", False)) == family["linear"]
                and _added_width(config) == family["added"]
                and (family["depths"] is None or tuple(_depths(config)) == family["depths"])):
            return name
    return None


def _head_problems(config: Mapping, family: Mapping) -> list[str]:
    channels = list(config["block_out_channels"])
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim"), len(channels))
    want = [family["heads"] or c // family["head_channels"] for c in channels]
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
    name = comfy_family(config)
    if name is None:
        problems.append(
            f"ComfyUI recognises no model family in it (first block {list(config.get('block_out_channels') or [])[:1]}, "
            f"context {config.get('cross_attention_dim')}, linear projection "
            f"{bool(config.get('use_linear_projection', False))}, added conditioning {_added_width(config)}, "
            f"transformer depths {_depths(config)}); it knows SD1.5, SD2 and SDXL")
    else:
        problems += _head_problems(config, _FAMILIES[name])
    return problems
