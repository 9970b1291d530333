"""Write FULL-SIZE random-weight models for the ComfyUI integration tests (ComfyUI only recognises SD2 inpainting
at full size). Run INSIDE a ComfyUI Python (COMFYUI_PYTHON; it needs ComfyUI for the key names and diffusers for the
ControlNet):

    python make_full_size_models.py <comfyui_path> <out_dir>

Writes into <out_dir> (skipped when <out_dir>/DONE matches this script's version):

* ``sd2_inpainting_random.safetensors`` -- a single-file SD2-inpainting checkpoint in the released layout
  (``model.diffusion_model.*`` 9-input-channel UNet, ``first_stage_model.*`` VAE, ``cond_stage_model.model.*``
  OpenCLIP ViT-H text tower), fp16, every tensor random (norm scales 1 + noise); the UNet's and VAE's key names
  come from ComfyUI's own modules built on the meta device, the prefixes and the text tower's keys from
  ``sb_testkit.sd_single_file`` (which writes the tiny version of this file for tests/test_single_file.py);
* ``sd2_base_random.safetensors`` -- the same with a 4-channel UNet input (an ordinary SD2 model);
* the salient ControlNet (diffusers ``ControlNetModel`` with the paper's config, every tensor random, fp16) in each
  released form: ``photo-background-generation/controlnet/`` (HF pipeline layout), ``controlnet-diffusers/`` (bare
  folder), ``controlnet_salient.safetensors`` (single file, diffusers keys), ``controlnet_plain.pth`` and
  ``controlnet_inpainting_salient_aware.pth`` (nested under ``state_dict`` with ``module.`` prefixes).

Needs ~10 GiB of memory at peak and a few minutes: run it under ``flock /tmp/heavy.lock``.
"""
from __future__ import annotations

import json
import os
import sys

VERSION = "3"
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)

SD2_UNET = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, adm_in_channels=None,
    in_channels=9, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=1024, use_temporal_resblock=False,
    use_temporal_attention=False, num_heads=-1, num_head_channels=64,
)
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def random_tensor(name: str, shape, gen, std: float = 0.02):
    import torch

    noise = torch.randn(shape, generator=gen, dtype=torch.float32) * std
    if name.endswith("logit_scale"):
        return torch.tensor(4.6052)
    is_scale = name.endswith("weight") and len(shape) == 1  # 1-D weights are the norms' scales
    return ((1.0 + noise) if is_scale else noise).to(torch.float16)


def start(version: str):
    """The output folder from the command line, or None when it already holds this version's files; otherwise
    ComfyUI (CPU) and the tests folder are made importable."""
    comfy_path, out = sys.argv[1], os.path.abspath(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    stamp = os.path.join(out, "DONE")
    if os.path.isfile(stamp) and open(stamp).read().strip() == version:
        print(json.dumps({"cached": out}))
        return None
    sys.path.insert(0, comfy_path)
    sys.path.insert(0, TESTS)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return out


def main() -> None:
    out = start(VERSION)
    if out is None:
        return
    import torch
    from safetensors.torch import save_file

    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    from sb_testkit.sd_single_file import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, openclip_text_shapes

    gen = torch.Generator().manual_seed(20240416)
    with torch.device("meta"):
        unet = openaimodel.UNetModel(**SD2_UNET, operations=comfy.ops.disable_weight_init, device="meta")
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    shapes = {UNET_PREFIX + k: list(v.shape) for k, v in unet.state_dict().items()}
    shapes.update({VAE_PREFIX + k: list(v.shape) for k, v in vae.state_dict().items()})
    shapes.update({TEXT_PREFIX + k: v for k, v in openclip_text_shapes().items()})  # OpenCLIP ViT-H/14
    del unet, vae
    state = {k: random_tensor(k, s, gen) for k, s in shapes.items()}
    save_file(state, os.path.join(out, "sd2_inpainting_random.safetensors"))
    first = "model.diffusion_model.input_blocks.0.0.weight"
    state[first] = state[first][:, :4].contiguous()
    save_file(state, os.path.join(out, "sd2_base_random.safetensors"))
    n_params = sum(v.numel() for v in state.values())
    del state

    # the ControlNet, every tensor random
    import conftest  # noqa: F401  (registers the pack as salient_background)
    from diffusers import ControlNetModel

    from salient_background.models.networks.controlnet_checkpoint import SD2_SALIENT_CONTROLNET_CONFIG
    from sb_testkit.diffusers_models import randomize_all_tensors

    cfg = {k: v for k, v in SD2_SALIENT_CONTROLNET_CONFIG.items() if not k.startswith("_")}
    controlnet = randomize_all_tensors(ControlNetModel(**cfg), seed=7, std=0.02).to(torch.float16)
    hf = os.path.join(out, "photo-background-generation", "controlnet")
    controlnet.save_pretrained(hf)
    weights = os.path.join(hf, "diffusion_pytorch_model.safetensors")
    bare = os.path.join(out, "controlnet-diffusers")
    os.makedirs(bare, exist_ok=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        dst = os.path.join(bare, name)
        if not os.path.exists(dst):
            os.link(os.path.join(hf, name), dst)
    single = os.path.join(out, "controlnet_salient.safetensors")
    if not os.path.exists(single):
        os.link(weights, single)
    sd = {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    torch.save(sd, os.path.join(out, "controlnet_plain.pth"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 12},
               os.path.join(out, "controlnet_inpainting_salient_aware.pth"))
    with open(os.path.join(out, "DONE"), "w") as fh:
        fh.write(VERSION)
    print(json.dumps({"written": out, "checkpoint_params": n_params,
                      "controlnet_params": sum(v.numel() for v in sd.values())}))


if __name__ == "__main__":
    main()
