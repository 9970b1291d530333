"""Write random-weight single-file checkpoints of the other inpainting bases and salient ControlNets for them, for
tests/integration/test_controlnet_bases_comfyui.py. Run INSIDE a ComfyUI Python (COMFYUI_PYTHON; it needs ComfyUI
for the key names and diffusers for the ControlNets):

    python make_base_models.py <comfyui_path> <out_dir>

Writes into <out_dir> (skipped when <out_dir>/DONE matches this script's version):

* ``sd15_inpainting_random.safetensors`` -- SD1.5 inpainting at full size in the original single-file layout:
  ``model.diffusion_model.*`` (9-input-channel UNet, 768-wide context, 8 heads, convolutional projections),
  ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L/14); also as
  ``sd15_inpainting_random.ckpt``, a pickle holding ``{"state_dict": ...}`` like the published
  ``sd-v1-5-inpainting.ckpt`` the SD1.5 workflow names;
* ``sdxl_vega_inpainting_random.safetensors`` -- an SDXL-family inpainting checkpoint ComfyUI detects from its
  weights as Segmind_Vega (SDXL's three levels, ``label_emb`` with 2816 inputs, transformer depth 0/1/2, a middle
  block without attention; full-size SDXL with a ControlNet needs ~19 GB in fp32), in SDXL's layout with both text
  encoders (``conditioner.embedders.0.transformer.text_model.*`` CLIP ViT-L, ``conditioner.embedders.1.model.*``
  OpenCLIP ViT-bigG);
* ``salient_controlnet_sd15/`` and ``salient_controlnet_sdxl/`` -- salient ControlNets (diffusers ControlNetModel
  cloned from those UNets' encoders: SD1.5 at full size, SDXL at the same Vega depth) written by the trainer's
  export (``training.export.export_controlnet``: config.json + weights + the recorded base), every tensor random.

The UNet's, VAE's and text encoders' key names come from ComfyUI's own modules built on the meta device, so the
files are what ComfyUI's Load Checkpoint expects. All weights fp16, random (norm scales 1 + noise). ~8 GiB of memory
at peak and a few minutes: run it under ``flock /tmp/heavy.lock``.
"""
from __future__ import annotations

import json
import os
import sys

VERSION = "2"
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from make_full_size_models import SD2_UNET, SD_VAE, random_tensor, start  # noqa: E402

SD15_UNET = dict(SD2_UNET, use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1)
VEGA_UNET = dict(
    SD2_UNET, num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
    transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=-1, context_dim=2048,
)
CHECKPOINTS = {"sd15": "sd15_inpainting_random.safetensors", "sdxl": "sdxl_vega_inpainting_random.safetensors"}
CONTROLNETS = {"sd15": "salient_controlnet_sd15", "sdxl": "salient_controlnet_sdxl"}
SD15_CKPT_PICKLE = "sd15_inpainting_random.ckpt"


def _meta_shapes(module, prefix: str) -> dict:
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def checkpoint_shapes(kind: str) -> dict:
    """Key -> shape of the whole single file (UNet, VAE, text encoders) for ``kind`` ("sd15" or "sdxl")."""
    import torch
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip

    from sb_testkit.sd_single_file import UNET_PREFIX, VAE_PREFIX, openclip_text_shapes

    ops = comfy.ops.disable_weight_init
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as fh:
        clip_l_config = json.load(fh)
    with torch.device("meta"):
        unet = openaimodel.UNetModel(**(SD15_UNET if kind == "sd15" else VEGA_UNET), operations=ops, device="meta")
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
        clip_l = comfy.clip_model.CLIPTextModel(clip_l_config, torch.float32, "meta", ops)
    shapes = _meta_shapes(unet, UNET_PREFIX)
    shapes.update(_meta_shapes(vae, VAE_PREFIX))
    if kind == "sd15":
        shapes.update(_meta_shapes(clip_l, "cond_stage_model.transformer."))
    else:
        shapes.update(_meta_shapes(clip_l, "conditioner.embedders.0.transformer."))
        bigg = openclip_text_shapes(width=1280, layers=32)  # OpenCLIP ViT-bigG/14's text tower
        shapes.update({"conditioner.embedders.1.model." + k: v for k, v in bigg.items()})
    return shapes


def write_checkpoint(kind: str, out: str, gen) -> int:
    """The single file (kept when an earlier run wrote it); for SD1.5 also the .ckpt pickle of the same weights."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(out, CHECKPOINTS[kind])
    if os.path.isfile(path):
        state = load_file(path)
    else:
        shapes = checkpoint_shapes(kind)
        state = {k: random_tensor(k, s, gen) for k, s in shapes.items() if not k.endswith("position_ids")}
        save_file(state, path + ".tmp")
        os.replace(path + ".tmp", path)
    pickle = os.path.join(out, SD15_CKPT_PICKLE)
    if kind == "sd15" and not os.path.isfile(pickle):  # the published SD1.5 inpainting file is a .ckpt pickle
        import torch

        torch.save({"state_dict": state, "global_step": 440000}, pickle + ".tmp")
        os.replace(pickle + ".tmp", pickle)
    return sum(v.numel() for v in state.values())


def write_controlnet(kind: str, out: str):
    from diffusers import ControlNetModel

    from salient_background.training.export import export_controlnet
    from sb_testkit import controlnet_parity as cp
    from sb_testkit.diffusers_models import randomize_all_tensors

    folder = os.path.join(out, CONTROLNETS[kind])
    if os.path.isfile(os.path.join(folder, "config.json")):
        return None  # written by an earlier, interrupted run
    config = cp.sd15_controlnet_config() if kind == "sd15" else cp.vega_controlnet_config()
    controlnet = randomize_all_tensors(ControlNetModel(**config), seed=7, std=0.02)
    export_controlnet(controlnet, folder, fp16=True)
    return sum(p.numel() for p in controlnet.parameters())


def main() -> None:
    out = start(VERSION)
    if out is None:
        return
    import torch

    import conftest  # noqa: F401  (registers the pack as salient_background)

    gen = torch.Generator().manual_seed(20240416)
    report = {"written": out}
    for kind in CHECKPOINTS:
        report[f"{kind}_checkpoint_params"] = write_checkpoint(kind, out, gen)
        report[f"{kind}_controlnet_params"] = write_controlnet(kind, out)
    with open(os.path.join(out, "DONE"), "w") as fh:
        fh.write(VERSION)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
