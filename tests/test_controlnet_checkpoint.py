"""Reading the salient ControlNet in every form, validating it, converting its keys for ComfyUI, and the pinned
ComfyUI-vs-diffusers parity (ComfyUI's outputs are golden arrays; CI recomputes the diffusers side)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from salient_background.models.networks import comfy_keys
from salient_background.models.networks.controlnet_checkpoint import (
    SD2_SALIENT_CONTROLNET_CONFIG,
    build_diffusers_controlnet,
    infer_config,
    load_controlnet_state_dict,
)
from salient_background.models.errors import CheckpointError
from sb_testkit import controlnet_parity as cp
from sb_testkit.diffusers_models import CROSS_ATTENTION_DIM

W = CROSS_ATTENTION_DIM  # the tiny models' cross-attention width


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- forms
def test_every_released_form_loads_to_the_same_diffusers_state_dict(tiny_sd):
    truth = tiny_sd.controlnet_state_dict()
    saved_config = json.load(open(os.path.join(tiny_sd.controlnet_dir, "config.json")))
    forms = {
        "HF pipeline folder": tiny_sd.hf_pipeline_dir,
        "HF controlnet/ sub-folder": os.path.join(tiny_sd.hf_pipeline_dir, "controlnet"),
        "diffusers folder (safetensors)": tiny_sd.controlnet_dir,
        "diffusers folder (.bin)": tiny_sd.controlnet_bin_dir,
        "single .safetensors": tiny_sd.controlnet_safetensors,
        **{f".pth {layout}": path for layout, path in tiny_sd.controlnet_pth.items()},
    }
    assert {"plain", "module", "state_dict", "model"} <= set(tiny_sd.controlnet_pth)
    for name, path in forms.items():
        state, config = load_controlnet_state_dict(path, cross_attention_dim=W)
        assert _equal(state, truth), name
        assert config["in_channels"] == 9 and config["cross_attention_dim"] == W, name
        if os.path.isdir(path):
            assert config["block_out_channels"] == saved_config["block_out_channels"], name
            assert config["attention_head_dim"] == saved_config["attention_head_dim"], name


def test_weights_file_of_a_folder_uses_the_config_beside_it(tiny_sd):
    path = os.path.join(tiny_sd.controlnet_dir, "diffusion_pytorch_model.safetensors")
    _, config = load_controlnet_state_dict(path, cross_attention_dim=W)
    assert config["norm_num_groups"] == 8 and list(config["attention_head_dim"]) == [2, 4]  # not inferred


def test_config_is_inferred_from_shapes_for_a_bare_file(tiny_sd):
    config = infer_config(tiny_sd.controlnet_state_dict())
    assert config["in_channels"] == 9 and config["conditioning_channels"] == 3
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert config["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert config["conditioning_embedding_out_channels"] == [8, 8, 16, 16]
    assert config["cross_attention_dim"] == W and config["use_linear_projection"] is True


def test_default_config_fills_what_weights_cannot_tell(tiny_sd):
    settings = {"attention_head_dim": [2, 4], "norm_num_groups": 8}
    _, config = load_controlnet_state_dict(tiny_sd.controlnet_pth["plain"], cross_attention_dim=W, default_config=settings)
    assert list(config["attention_head_dim"]) == [2, 4] and config["norm_num_groups"] == 8
    # a folder's own config wins over the defaults
    _, config = load_controlnet_state_dict(tiny_sd.controlnet_dir, cross_attention_dim=W, default_config={"norm_num_groups": 32})
    assert config["norm_num_groups"] == 8


def test_ldm_named_checkpoints_are_converted_back(tiny_sd, tmp_path):
    truth = tiny_sd.controlnet_state_dict()
    ldm = comfy_keys.convert_diffusers_to_comfy(truth, prefix="control_model.")
    torch.save(ldm, tmp_path / "ldm_controlnet.pth")
    state, _ = load_controlnet_state_dict(tmp_path / "ldm_controlnet.pth", cross_attention_dim=W)
    assert _equal(state, truth)


def test_diffusers_model_built_from_any_form_matches_the_saved_model(tiny_sd):
    from diffusers import ControlNetModel

    ref = ControlNetModel.from_pretrained(tiny_sd.controlnet_dir).eval()
    ours = build_diffusers_controlnet(tiny_sd.hf_pipeline_dir, cross_attention_dim=W)
    g = torch.Generator().manual_seed(0)
    sample, hint = torch.randn(1, 9, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    ctx = torch.randn(1, 4, W, generator=g)
    with torch.no_grad():
        a = ref(sample, 10, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        b = ours(sample, 10, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
    assert torch.equal(a[1], b[1]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1].abs().max() > 0  # the random zero convs make the residuals non-trivial


# ---------------------------------------------------------------------------------------------- errors
def test_errors_say_what_was_found(tiny_sd, tmp_path):
    truth = tiny_sd.controlnet_state_dict()
    # a width asked for (SD2's) is checked: the tiny model's 32 is reported
    with pytest.raises(CheckpointError, match="cross-attention width is 32, expected 1024"):
        load_controlnet_state_dict(tiny_sd.controlnet_dir, cross_attention_dim=1024)
    # a 4-channel (text-to-image) ControlNet
    four = dict(truth)
    four["conv_in.weight"] = truth["conv_in.weight"][:, :4].clone()
    torch.save(four, tmp_path / "four.pth")
    with pytest.raises(CheckpointError, match="takes 4 input channels -- an ordinary text-to-image ControlNet"):
        load_controlnet_state_dict(tmp_path / "four.pth", cross_attention_dim=W)
    # SD1.x width
    with pytest.raises(CheckpointError, match=r"width is 32 .*expected 768|expected 768"):
        load_controlnet_state_dict(tiny_sd.controlnet_dir, cross_attention_dim=768)
    # missing weights are named
    partial = {k: v for k, v in truth.items() if k != "down_blocks.0.resnets.0.conv2.weight"}
    shutil.copytree(tiny_sd.controlnet_dir, tmp_path / "partial")
    from safetensors.torch import save_file

    save_file(partial, str(tmp_path / "partial" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="1 weights are missing: down_blocks.0.resnets.0.conv2.weight"):
        load_controlnet_state_dict(tmp_path / "partial", cross_attention_dim=W)
    # a training checkpoint without weights: the entries found are listed
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-5}}, tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match=r"holds no tensors.*'epoch': int.*'optimizer': dict"):
        load_controlnet_state_dict(tmp_path / "opt.pth")
    # not a ControlNet at all
    torch.save({"conv_out.weight": torch.zeros(1), "up_blocks.0.x": torch.zeros(1), "conv_in.weight": torch.zeros(1)},
               tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="diffusers UNet, not a ControlNet"):
        load_controlnet_state_dict(tmp_path / "unet.pth")
    # a folder that is neither layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_controlnet_state_dict(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_controlnet_state_dict(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------------- ComfyUI keys
def _sd2_diffusers_shapes() -> dict:
    from diffusers import ControlNetModel

    cfg = {k: v for k, v in SD2_SALIENT_CONTROLNET_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = ControlNetModel(**cfg)
    return model.state_dict()


def test_sd2_conversion_matches_comfyui_key_names_and_shapes_exactly():
    """Full-size SD2 ControlNet (meta tensors, no memory): our converted names and shapes equal the list ComfyUI's
    cldm.ControlNet has for the config it detects (pinned in tests/data by the integration run)."""
    pinned = json.load(open(cp.COMFY_KEYS_PATH))
    assert pinned["detected_as"] == "SD20"
    diffusers_sd = _sd2_diffusers_shapes()
    converted = comfy_keys.convert_diffusers_to_comfy(diffusers_sd)
    assert len(converted) == len(diffusers_sd) == len(pinned["keys"]) == 340
    assert {k: list(v.shape) for k, v in converted.items()} == pinned["keys"]
    # our enumeration of the diffusers keys is complete too (validation relies on it)
    layout = comfy_keys.ControlNetLayout.from_config(SD2_SALIENT_CONTROLNET_CONFIG)
    assert sorted(comfy_keys.expected_diffusers_keys(layout)) == sorted(diffusers_sd)
    # and the conversion is a bijection: back again, with or without the control_model. prefix
    assert comfy_keys.convert_comfy_to_diffusers(converted).keys() == diffusers_sd.keys()
    prefixed = comfy_keys.convert_diffusers_to_comfy(diffusers_sd, prefix="control_model.")
    assert sorted(comfy_keys.convert_comfy_to_diffusers(prefixed)) == sorted(diffusers_sd)


def test_conversion_refuses_keys_it_cannot_place():
    keys = list(_sd2_diffusers_shapes()) + ["class_embedding.linear_1.weight"]
    with pytest.raises(CheckpointError, match="class_embedding.linear_1.weight"):
        comfy_keys.diffusers_to_comfy_key_map(keys)


# ---------------------------------------------------------------------------------------------- parity
def test_comfyui_residuals_pinned_equal_diffusers_controlnet():
    """ComfyUI's control residuals (through our loader, key conversion and c_concat route, pinned where ComfyUI
    ran) vs diffusers' ControlNetModel on the same random weights and inputs: <= 1e-4 in fp32."""
    golden = np.load(cp.GOLDEN_PATH)
    model = cp.build_parity_controlnet()
    fingerprint = cp.weights_fingerprint(model.state_dict())
    assert fingerprint == pytest.approx(float(golden["fingerprint"]), rel=1e-9), \
        "the seeded random weights changed (torch RNG?); regenerate the golden with comfy_controlnet_parity.py"
    ref = cp.diffusers_residuals(model, cp.parity_inputs())
    names = sorted(k for k in golden.files if k != "fingerprint")
    assert names == sorted(ref)
    assert len(names) == 5  # 4 zero convs (2 blocks x 1 layer + downsampler + conv_in) + middle
    for k in names:
        assert golden[k].shape == ref[k].shape, k
        assert np.abs(ref[k]).max() > 1.0, k  # non-trivial residuals
        assert np.abs(golden[k] - ref[k]).max() <= 1e-4, (k, float(np.abs(golden[k] - ref[k]).max()))


def test_loader_choices_list_files_and_controlnet_folders(tiny_sd, tmp_path, monkeypatch):
    from salient_background.nodes import comfy_glue, controlnet_nodes

    root = tmp_path / "controlnet"
    shutil.copytree(tiny_sd.hf_pipeline_dir, root / "photo-background-generation")
    shutil.copytree(tiny_sd.controlnet_dir, root / "mine" / "v2")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a model")
    monkeypatch.setattr(comfy_glue, "model_folder_paths", lambda folder: [str(root)] if folder == "controlnet" else [])
    monkeypatch.setattr(comfy_glue, "list_model_files", lambda folder: ["single.safetensors"])
    choices = controlnet_nodes.controlnet_choices()
    assert choices == ["mine/v2", "photo-background-generation", "single.safetensors"]
    path = comfy_glue.resolve_model_dir("controlnet", "photo-background-generation")
    state, _ = load_controlnet_state_dict(path, cross_attention_dim=W)
    assert _equal(state, tiny_sd.controlnet_state_dict())
    # ComfyUI validation (before anything runs) accepts the folder by name and explains a missing one
    assert controlnet_nodes.LoadSalientControlNet.VALIDATE_INPUTS("photo-background-generation") is True
    reason = controlnet_nodes.LoadSalientControlNet.VALIDATE_INPUTS("gone/controlnet")
    assert isinstance(reason, str) and "gone/controlnet" in reason and str(root) in reason
