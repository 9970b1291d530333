"""Key names of the salient ControlNet: diffusers <-> ComfyUI (ldm ``cldm.ControlNet``), both directions, exact.

Pure string work (no ComfyUI, no diffusers import). ComfyUI's own diffusers-ControlNet loader only knows fixed
templates and has none for a 9-input-channel inpainting ControlNet, so the nodes convert the keys here and hand
ComfyUI a state dict in its own layout, which it then recognises from the weights like a UNet: SD1.5 (768-wide
context, convolutional projections: 8 heads), SD2 (1024, linear projections, head size 64) or SDXL (2048, the
``label_emb`` added-conditioning embedding, no attention in the first level, deeper transformers per level).

Mapping (L = ``layers_per_block``, i = down block, j = layer in it):

=========================================== ========================================================
diffusers                                    ComfyUI (ldm)
=========================================== ========================================================
conv_in                                      input_blocks.0.0
time_embedding.linear_1 / linear_2           time_embed.0 / time_embed.2
controlnet_cond_embedding.conv_in            input_hint_block.0
controlnet_cond_embedding.blocks.k           input_hint_block.2(k+1)
controlnet_cond_embedding.conv_out           input_hint_block.2(K+1)   (K = number of blocks)
down_blocks.i.resnets.j                      input_blocks.(1 + i(L+1) + j).0   (resnet sub-names below)
down_blocks.i.attentions.j                   input_blocks.(1 + i(L+1) + j).1   (same sub-names)
down_blocks.i.downsamplers.0.conv            input_blocks.((i+1)(L+1)).0.op
mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
controlnet_down_blocks.n                     zero_convs.n.0
controlnet_mid_block                         middle_block_out.0
add_embedding.linear_1 / linear_2 (SDXL)     label_emb.0.0 / label_emb.0.2
=========================================== ========================================================

ResNet sub-names: norm1 -> in_layers.0, conv1 -> in_layers.2, time_emb_proj -> emb_layers.1,
norm2 -> out_layers.0, conv2 -> out_layers.3, conv_shortcut -> skip_connection. Transformer blocks keep their names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from ..errors import CheckpointError

RESNET_TO_COMFY = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
RESNET_TO_DIFFUSERS = {v: k for k, v in RESNET_TO_COMFY.items()}

COMFY_PREFIX = "control_model."  # lllyasviel-style .pth files wrap the ldm keys in this prefix


# ---------------------------------------------------------------------------------------------------------------
# layout (enough structure to enumerate every key)
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlNetLayout:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    transformer_depth: tuple[int, ...]  # per down block; 0 = no attention (DownBlock2D)
    mid_transformer_depth: int
    cond_embedding_channels: tuple[int, ...]  # conditioning_embedding_out_channels
    added_embedding: bool = False  # SDXL's text_time added conditioning (add_embedding.linear_1/2)

    @property
    def num_cond_blocks(self) -> int:
        return 2 * (len(self.cond_embedding_channels) - 1)

    @classmethod
    def from_config(cls, config: Mapping) -> "ControlNetLayout":
        channels = tuple(int(c) for c in config.get("block_out_channels", (320, 640, 1280, 1280)))
        types = config.get("down_block_types") or (["CrossAttnDownBlock2D"] * (len(channels) - 1) + ["DownBlock2D"])
        depth = config.get("transformer_layers_per_block", 1)
        depth = [int(depth)] * len(channels) if isinstance(depth, (int, float)) else [int(d) for d in depth]
        per_block = tuple(d if "CrossAttn" in t else 0 for t, d in zip(types, depth))
        mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        mid_depth = 0 if mid_type in (None, "UNetMidBlock2D") else depth[-1]
        lpb = config.get("layers_per_block", 2)
        if not isinstance(lpb, int):
            raise CheckpointError(f"per-block layers_per_block {lpb!r} is not supported (not an SD1/SD2/SDXL-style ControlNet)")
        return cls(
            block_out_channels=channels,
            layers_per_block=lpb,
            transformer_depth=per_block,
            mid_transformer_depth=mid_depth,
            cond_embedding_channels=tuple(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))),
            added_embedding=config.get("addition_embed_type") == "text_time",
        )

    @classmethod
    def from_diffusers_keys(cls, state_dict: Mapping) -> "ControlNetLayout":
        keys = list(state_dict)

        def count(prefix: str) -> int:
            n = 0
            while any(k.startswith(f"{prefix}{n}.") for k in keys):
                n += 1
            return n

        n_blocks = count("down_blocks.")
        if n_blocks == 0:
            raise CheckpointError("no 'down_blocks.*' keys: not a diffusers ControlNet state dict")
        lpb = count("down_blocks.0.resnets.")
        channels, depth = [], []
        for i in range(n_blocks):
            w = state_dict.get(f"down_blocks.{i}.resnets.0.conv1.weight")
            channels.append(int(w.shape[0]) if w is not None else 0)
            depth.append(count(f"down_blocks.{i}.attentions.0.transformer_blocks."))
        mid_depth = count("mid_block.attentions.0.transformer_blocks.")
        n_cond = count("controlnet_cond_embedding.blocks.")
        cond = []
        if "controlnet_cond_embedding.conv_in.weight" in state_dict:
            cond.append(int(state_dict["controlnet_cond_embedding.conv_in.weight"].shape[0]))
            for k in range(1, n_cond, 2):
                w = state_dict.get(f"controlnet_cond_embedding.blocks.{k}.weight")
                cond.append(int(w.shape[0]) if w is not None else 0)
        added = any(k.startswith("add_embedding.") for k in keys)
        return cls(tuple(channels), lpb, tuple(depth), mid_depth, tuple(cond), added)


def _transformer_keys(prefix: str, depth: int) -> list[str]:
    keys = [f"{prefix}{n}.{b}" for n in ("norm", "proj_in", "proj_out") for b in ("weight", "bias")]
    for t in range(depth):
        p = f"{prefix}transformer_blocks.{t}."
        for attn in ("attn1", "attn2"):
            keys += [f"{p}{attn}.to_{x}.weight" for x in ("q", "k", "v")]
            keys += [f"{p}{attn}.to_out.0.{b}" for b in ("weight", "bias")]
        keys += [f"{p}{n}.{b}" for n in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2") for b in ("weight", "bias")]
    return keys


def _resnet_keys(prefix: str, shortcut: bool) -> list[str]:
    names = ["norm1", "conv1", "time_emb_proj", "norm2", "conv2"] + (["conv_shortcut"] if shortcut else [])
    return [f"{prefix}{n}.{b}" for n in names for b in ("weight", "bias")]



def _resnet_suffix_to_diffusers(rest: str) -> str | None:
    """ComfyUI resnet parameter suffix ('in_layers.2.weight', 'skip_connection.bias') -> diffusers' ('conv1.weight',
    'conv_shortcut.bias'); None when it is not a resnet parameter."""
    name, _, leaf = rest.partition(".")
    name2, _, leaf2 = leaf.partition(".")
    renamed = RESNET_TO_DIFFUSERS.get(f"{name}.{name2}") or RESNET_TO_DIFFUSERS.get(name)
    if renamed is None:
        return None
    tail = leaf2 if f"{name}.{name2}" in RESNET_TO_DIFFUSERS else leaf
    return f"{renamed}.{tail}"

def expected_diffusers_keys(layout: ControlNetLayout) -> list[str]:
    """Every key of a diffusers ``ControlNetModel`` with this layout (no class embedding; SDXL's add-embedding when
    the layout has one)."""
    wb = ("weight", "bias")
    keys = [f"conv_in.{b}" for b in wb]
    keys += [f"time_embedding.linear_{i}.{b}" for i in (1, 2) for b in wb]
    if layout.added_embedding:
        keys += [f"add_embedding.linear_{i}.{b}" for i in (1, 2) for b in wb]
    keys += [f"controlnet_cond_embedding.conv_in.{b}" for b in wb]
    keys += [f"controlnet_cond_embedding.blocks.{k}.{b}" for k in range(layout.num_cond_blocks) for b in wb]
    keys += [f"controlnet_cond_embedding.conv_out.{b}" for b in wb]
    L = layout.layers_per_block
    n_blocks = len(layout.block_out_channels)
    n_zero = 1
    prev = layout.block_out_channels[0]
    for i, ch in enumerate(layout.block_out_channels):
        for j in range(L):
            keys += _resnet_keys(f"down_blocks.{i}.resnets.{j}.", shortcut=(j == 0 and ch != prev))
            if layout.transformer_depth[i]:
                keys += _transformer_keys(f"down_blocks.{i}.attentions.{j}.", layout.transformer_depth[i])
            n_zero += 1
        prev = ch
        if i < n_blocks - 1:
            keys += [f"down_blocks.{i}.downsamplers.0.conv.{b}" for b in wb]
            n_zero += 1
    keys += _resnet_keys("mid_block.resnets.0.", False)
    if layout.mid_transformer_depth:
        keys += _transformer_keys("mid_block.attentions.0.", layout.mid_transformer_depth)
        keys += _resnet_keys("mid_block.resnets.1.", False)
    keys += [f"controlnet_down_blocks.{n}.{b}" for n in range(n_zero) for b in wb]
    keys += [f"controlnet_mid_block.{b}" for b in wb]
    return keys


# ---------------------------------------------------------------------------------------------------------------
# key conversion
# ---------------------------------------------------------------------------------------------------------------
_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_COND_BLOCK = re.compile(r"^controlnet_cond_embedding\.blocks\.(\d+)\.(.+)$")
_ZERO = re.compile(r"^controlnet_down_blocks\.(\d+)\.(.+)$")


def _resnet_rest_to_comfy(rest: str) -> Optional[str]:
    name, _, leaf = rest.partition(".")
    mapped = RESNET_TO_COMFY.get(name)
    return f"{mapped}.{leaf}" if mapped and leaf else None


def diffusers_key_to_comfy(key: str, layers_per_block: int, num_cond_blocks: int) -> Optional[str]:
    """The ComfyUI name of one diffusers ControlNet key, or None when the key has no counterpart."""
    L = layers_per_block
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
        "controlnet_cond_embedding.conv_out.": f"input_hint_block.{2 * (num_cond_blocks + 1)}.",
        "controlnet_mid_block.": "middle_block_out.0.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
    }
    for src, dst in simple.items():
        if key.startswith(src):
            return dst + key[len(src):]
    m = _DOWN.match(key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if j >= L:
            return None
        block = 1 + i * (L + 1) + j
        if kind == "resnets":
            rest = _resnet_rest_to_comfy(rest)
            return None if rest is None else f"input_blocks.{block}.0.{rest}"
        return f"input_blocks.{block}.1.{rest}"
    m = _DOWNSAMPLE.match(key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
    m = _MID.match(key)
    if m:
        kind, n, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}" if n == 0 else None
        if n > 1:
            return None
        rest = _resnet_rest_to_comfy(rest)
        return None if rest is None else f"middle_block.{2 * n}.{rest}"
    m = _COND_BLOCK.match(key)
    if m:
        return f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
    m = _ZERO.match(key)
    if m:
        return f"zero_convs.{m[1]}.0.{m[2]}"
    return None


def diffusers_to_comfy_key_map(keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers key: ComfyUI key}`` for a full diffusers ControlNet state dict's keys.

    Raises :class:`CheckpointError` naming the keys that have no ComfyUI counterpart (nothing is dropped silently).
    """
    keys = list(keys)
    L = 0
    while any(k.startswith(f"down_blocks.0.resnets.{L}.") for k in keys):
        L += 1
    num_cond = 0
    while any(k.startswith(f"controlnet_cond_embedding.blocks.{num_cond}.") for k in keys):
        num_cond += 1
    if L == 0:
        raise CheckpointError("no 'down_blocks.0.resnets.*' keys: not a diffusers ControlNet state dict")
    mapping, unmapped = {}, []
    for k in keys:
        v = diffusers_key_to_comfy(k, L, num_cond)
        if v is None:
            unmapped.append(k)
        else:
            mapping[k] = v
    if unmapped:
        from .checkpoint_io import describe_keys

        raise CheckpointError(
            "these ControlNet keys have no ComfyUI counterpart (not an SD1/SD2/SDXL-style ControlNet, or extra "
            f"modules such as a class embedding): {describe_keys(unmapped)}"
        )
    if len(set(mapping.values())) != len(mapping):
        raise CheckpointError("ControlNet key conversion is not one-to-one (inconsistent block structure)")
    return mapping


def convert_diffusers_to_comfy(state_dict: Mapping, prefix: str = "") -> dict:
    """Rename every key of a diffusers ControlNet state dict to ComfyUI's ldm names (tensors are not copied)."""
    mapping = diffusers_to_comfy_key_map(state_dict.keys())
    return {prefix + mapping[k]: v for k, v in state_dict.items()}


def comfy_to_diffusers_key_map(keys: Iterable[str]) -> dict[str, str]:
    """Inverse of :func:`diffusers_to_comfy_key_map` for an ldm-named ControlNet (optionally ``control_model.``)."""
    keys = list(keys)
    strip = COMFY_PREFIX if keys and all(k.startswith(COMFY_PREFIX) for k in keys) else ""
    bare = [k[len(strip):] for k in keys]
    # layers_per_block: the first downsampler is input_blocks.(L+1).0.op
    ops = sorted(int(m[1]) for k in bare if (m := re.match(r"^input_blocks\.(\d+)\.0\.op\.", k)))
    if not ops:
        raise CheckpointError("no downsampler keys ('input_blocks.N.0.op.*'): not an ldm ControlNet state dict")
    L = ops[0] - 1
    hint = sorted({int(m[1]) for k in bare if (m := re.match(r"^input_hint_block\.(\d+)\.", k))})
    num_cond = len(hint) - 2
    # Build the forward map on candidate diffusers names, then invert.
    n_input = 1 + max(int(m[1]) for k in bare if (m := re.match(r"^input_blocks\.(\d+)\.", k)))
    inverse: dict[str, str] = {}
    candidates: list[str] = []
    for k in bare:
        candidates.extend(_comfy_key_candidates(k, L, num_cond, n_input))
    for c in candidates:
        v = diffusers_key_to_comfy(c, L, num_cond)
        if v is not None:
            inverse[v] = c
    out, unmapped = {}, []
    for k, b in zip(keys, bare):
        if b in inverse:
            out[k] = inverse[b]
        else:
            unmapped.append(k)
    if unmapped:
        from .checkpoint_io import describe_keys

        raise CheckpointError(f"these ldm ControlNet keys have no diffusers counterpart: {describe_keys(unmapped)}")
    return out


def _comfy_key_candidates(key: str, L: int, num_cond: int, n_input: int) -> list[str]:
    """Diffusers names that could map to the ldm ``key`` (the forward map then picks the right one)."""
    m = re.match(r"^input_blocks\.(\d+)\.(\d+)\.(.+)$", key)
    if m:
        block, sub, rest = int(m[1]), int(m[2]), m[3]
        if block == 0:
            return [f"conv_in.{rest}"]
        i, j = divmod(block - 1, L + 1)
        if j == L:  # downsampler
            return [f"down_blocks.{i}.downsamplers.0.conv.{rest[len('op.'):]}"] if rest.startswith("op.") else []
        if sub == 1:
            return [f"down_blocks.{i}.attentions.{j}.{rest}"]
        renamed = _resnet_suffix_to_diffusers(rest)
        return [f"down_blocks.{i}.resnets.{j}.{renamed}"] if renamed else []
    m = re.match(r"^middle_block\.(\d+)\.(.+)$", key)
    if m:
        n, rest = int(m[1]), m[2]
        if n == 1:
            return [f"mid_block.attentions.0.{rest}"]
        renamed = _resnet_suffix_to_diffusers(rest)
        return [f"mid_block.resnets.{n // 2}.{renamed}"] if renamed else []
    m = re.match(r"^input_hint_block\.(\d+)\.(.+)$", key)
    if m:
        idx, rest = int(m[1]), m[2]
        if idx == 0:
            return [f"controlnet_cond_embedding.conv_in.{rest}"]
        return [f"controlnet_cond_embedding.blocks.{idx // 2 - 1}.{rest}", f"controlnet_cond_embedding.conv_out.{rest}"]
    m = re.match(r"^zero_convs\.(\d+)\.0\.(.+)$", key)
    if m:
        return [f"controlnet_down_blocks.{m[1]}.{m[2]}"]
    for src, dst in (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                     ("middle_block_out.0.", "controlnet_mid_block."), ("label_emb.0.0.", "add_embedding.linear_1."),
                     ("label_emb.0.2.", "add_embedding.linear_2.")):
        if key.startswith(src):
            return [dst + key[len(src):]]
    return []


def convert_comfy_to_diffusers(state_dict: Mapping) -> dict:
    """Rename an ldm-named ControlNet state dict (``control_model.`` prefix optional) to diffusers names."""
    mapping = comfy_to_diffusers_key_map(state_dict.keys())
    return {mapping[k]: v for k, v in state_dict.items()}


def looks_like_diffusers_controlnet(keys: Iterable[str]) -> bool:
    keys = set(keys)
    return "controlnet_cond_embedding.conv_in.weight" in keys and "conv_in.weight" in keys


def looks_like_comfy_controlnet(keys: Iterable[str]) -> bool:
    keys = set(keys)
    return any(k in keys for k in ("input_hint_block.0.weight", COMFY_PREFIX + "input_hint_block.0.weight"))
