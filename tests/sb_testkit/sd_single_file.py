"""Stable Diffusion 2 single-file checkpoints in the ORIGINAL (LDM) layout, as ComfyUI's Load Checkpoint reads them.

The released ``512-inpainting-ema.safetensors`` holds three networks under three prefixes:

* ``model.diffusion_model.*`` -- the UNet (``input_blocks`` / ``middle_block`` / ``output_blocks``);
* ``first_stage_model.*`` -- the VAE (``encoder.down.<i>.block.<j>`` ...);
* ``cond_stage_model.model.*`` -- the OpenCLIP text tower (``transformer.resblocks.<i>`` with fused ``in_proj``).

ComfyUI and diffusers' ``from_single_file`` convert LDM -> diffusers; here is the other direction, small and
self-made, so a test can write the SAME random weights once as a diffusers folder and once as a single file and
compare what the two loaders give. Only the block types the SD2 UNet/VAE use are covered (resnets, spatial
transformers with linear projections, down/up samplers). ``tests/integration/make_full_size_models.py`` uses the
prefixes and the OpenCLIP key layout from here for its full-size file.
"""
from __future__ import annotations

import os
import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

# diffusers resnet part -> LDM ResBlock part (UNet)
_UNET_RESNET_PARTS = (
    ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
}


def openclip_text_shapes(width: int = 1024, layers: int = 24, vocab: int = 49408, ctx: int = 77) -> dict[str, list[int]]:
    """Key -> shape of an OpenCLIP text tower as SD2 checkpoints store it under ``cond_stage_model.model``
    (defaults: ViT-H/14, the released SD2's)."""
    w = width
    shapes = {"positional_embedding": [ctx, w], "text_projection": [w, w], "logit_scale": [],
              "token_embedding.weight": [vocab, w], "ln_final.weight": [w], "ln_final.bias": [w]}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": [w], p + "ln_1.bias": [w], p + "ln_2.weight": [w], p + "ln_2.bias": [w],
            p + "attn.in_proj_weight": [3 * w, w], p + "attn.in_proj_bias": [3 * w],
            p + "attn.out_proj.weight": [w, w], p + "attn.out_proj.bias": [w],
            p + "mlp.c_fc.weight": [4 * w, w], p + "mlp.c_fc.bias": [4 * w],
            p + "mlp.c_proj.weight": [w, 4 * w], p + "mlp.c_proj.bias": [w],
        })
    return shapes


# ------------------------------------------------------------------------------------------------------ UNet
def _unet_block_prefixes(state: dict, layers_per_block: int) -> dict[str, str]:
    """diffusers block prefix -> LDM block prefix, for the levels present in ``state``."""
    levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k)))
    per_level = layers_per_block + 1  # input blocks per level: the resnets + the downsampler
    out: dict[str, str] = {}
    for i in range(levels):
        for j in range(layers_per_block):
            block = per_level * i + j + 1
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{block}.0."
            out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{block}.1."
        out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{per_level * (i + 1)}.0.op."
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for j in range(layers_per_block + 1):
            block = per_level * i + j
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{block}.0."
            out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{block}.1."
        last = per_level * i + layers_per_block
        out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{last}.{2 if has_attention else 1}."
    out["mid_block.attentions.0."] = "middle_block.1."
    out["mid_block.resnets.0."] = "middle_block.0."
    out["mid_block.resnets.1."] = "middle_block.2."
    return out


def diffusers_unet_to_ldm(state: dict, layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict -> the LDM UNet's keys (without ``model.diffusion_model.``).
    Spatial-transformer internals keep their names (they are the same in both layouts)."""
    blocks = _unet_block_prefixes(state, layers_per_block)
    converted = {}
    for key, value in state.items():
        top = next((p for p in _UNET_TOP if key.startswith(p)), None)
        if top is not None:
            converted[_UNET_TOP[top] + key[len(top):]] = value
            continue
        prefix = next((p for p in blocks if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = next((new + rest[len(old):] for old, new in _UNET_RESNET_PARTS if rest.startswith(old)), rest)
        converted[blocks[prefix] + rest] = value
    return converted


# ------------------------------------------------------------------------------------------------------ VAE
_VAE_ATTENTION_PARTS = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                        ("to_out.0.", "proj_out."))


def diffusers_vae_to_ldm(state: dict) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict -> the LDM VAE's keys (without ``first_stage_model.``). The LDM
    attention projections are 1x1 convolutions, so their weights gain two trailing dimensions."""
    levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    converted = {}
    for key, value in state.items():
        new = key.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            head, part = new.split(".mid.attn_1.")
            part = next((ldm + part[len(old):] for old, ldm in _VAE_ATTENTION_PARTS if part.startswith(old)), part)
            new = f"{head}.mid.attn_1.{part}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        converted[new] = value
    return converted


# ------------------------------------------------------------------------------------------------------ text
_TEXT_LAYER_PARTS = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                     ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj."))


def diffusers_text_encoder_to_openclip(state: dict) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict -> the OpenCLIP text tower's keys (without
    ``cond_stage_model.model.``): q/k/v fused into ``in_proj``, plus the ``text_projection`` (identity; SD2 does not
    use it) and ``logit_scale`` the released file carries."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    width = state["embeddings.token_embedding.weight"].shape[1]
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"], "ln_final.bias": state["final_layer_norm.bias"],
        "text_projection": torch.eye(width, dtype=state["final_layer_norm.weight"].dtype),
        "logit_scale": torch.tensor(4.6052),
    }
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            for old, new in _TEXT_LAYER_PARTS:
                out[f"{dst}{new}{kind}"] = state[f"{src}{old}{kind}"]
    return out


# ------------------------------------------------------------------------------------------------------ file
def sd2_single_file_state(unet, vae, text_encoder, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The three networks under the released file's prefixes, every tensor in ``dtype``."""
    state = {}
    unet_sd = {k: v for k, v in unet.state_dict().items()}
    for key, value in diffusers_unet_to_ldm(unet_sd, unet.config.layers_per_block).items():
        state[UNET_PREFIX + key] = value
    for key, value in diffusers_vae_to_ldm(vae.state_dict()).items():
        state[VAE_PREFIX + key] = value
    for key, value in diffusers_text_encoder_to_openclip(text_encoder.state_dict()).items():
        state[TEXT_PREFIX + key] = value
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in state.items()}


def write_sd2_single_file(path: str, unet, vae, text_encoder, dtype: torch.dtype = torch.float16) -> str:
    """Save :func:`sd2_single_file_state` as one ``.safetensors`` (or a ``.ckpt`` pickle nested under
    ``state_dict``, the other released form)."""
    state = sd2_single_file_state(unet, vae, text_encoder, dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".ckpt"):
        torch.save({"state_dict": state, "global_step": 1}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    return path


# ------------------------------------------------------------------------------------------------------ layouts
# The config and tokenizer files a single-file load needs (the registry's "sd2-configs"), relative to the folder.
CONFIG_FILES = (
    "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
)


def copy_config_folder(si2_dir: str, dst: str) -> str:
    """The diffusers folder ``si2_dir`` without its weights: what ``download sd2-configs`` leaves on disk."""
    import shutil

    for rel in CONFIG_FILES:
        target = os.path.join(dst, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(si2_dir, *rel.split("/")), target)
    return dst


def comfyui_models_dir(tiny, root: str, *, dtype: torch.dtype = torch.float16, with_configs: bool = True,
                       name: str = "512-inpainting-ema.safetensors") -> str:
    """A ComfyUI-style models folder holding the tiny SI2 as ``checkpoints/<name>`` (``dtype``, like the released
    file) and, with ``with_configs``, ``diffusers/stable-diffusion-2-inpainting/`` with only its configs.
    ``tiny``: a :class:`sb_testkit.diffusers_models.TinySDModels`. Returns ``root``."""
    unet, vae, text_encoder, _tokenizer, _controlnet = tiny.load_components()
    write_sd2_single_file(os.path.join(root, "checkpoints", name), unet, vae, text_encoder, dtype)
    if with_configs:
        copy_config_folder(tiny.si2_dir, os.path.join(root, "diffusers", "stable-diffusion-2-inpainting"))
    return root
