"""``--si2 512-inpainting-ema.safetensors``: the original-layout single file ComfyUI loads, read by the command line.

The tiny random SI2 is written twice with the SAME weights -- as the diffusers folder and as an LDM-layout single
file (tests/sb_testkit/sd_single_file.py converts diffusers -> LDM; diffusers' loader converts back) -- and the two
loads must give the same networks and the same image. The small config folder sits where the registry's
``download sd2-configs`` puts it (ComfyUI layout); without it the error names that command. Nothing may touch the
network while loading.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from sb_testkit.sd_single_file import comfyui_models_dir, copy_config_folder, write_sd2_single_file

from salient_background.models.errors import CheckpointError

SIZE = 64
SINGLE = os.path.join("checkpoints", "512-inpainting-ema.safetensors")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models_fp32(tiny_sd, tmp_path_factory):  # noqa: F811
    return comfyui_models_dir(tiny_sd, str(tmp_path_factory.mktemp("comfy32")), dtype=torch.float32)


@pytest.fixture(scope="module")
def models_fp16(tiny_sd, tmp_path_factory):  # noqa: F811
    return comfyui_models_dir(tiny_sd, str(tmp_path_factory.mktemp("comfy16")), dtype=torch.float16)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _image(pipe):
    g = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (1, SIZE, SIZE, 3), generator=g).float() / 255.0
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:48, 20:44] = 1.0
    return pipe(photo, mask, "a photo of a bottle on a table", num_inference_steps=2,
                generator=torch.Generator().manual_seed(7), show_progress=False).images


def test_single_file_and_diffusers_folder_give_the_same_image(tiny_sd, models_fp32, no_network):  # noqa: F811
    from salient_background.models.generation.loading import load_pipeline

    folder = load_pipeline(si2_path=tiny_sd.si2_dir, controlnet_path=tiny_sd.controlnet_dir)
    single = load_pipeline(si2_path=os.path.join(models_fp32, SINGLE), controlnet_path=tiny_sd.controlnet_dir)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert set(a) == set(b), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert type(single.scheduler).__name__ == "UniPCMultistepScheduler"
    assert single.tokenizer("a photo").input_ids == folder.tokenizer("a photo").input_ids
    np.testing.assert_array_equal(_image(single), _image(folder))


def test_the_fp16_file_loads_in_the_requested_dtype(tiny_sd, models_fp16, no_network):  # noqa: F811
    from salient_background.models.generation.loading import load_pipeline, load_components

    path = os.path.join(models_fp16, SINGLE)
    vae, text_encoder, _tok, unet, _sched = load_components(path, dtype=torch.bfloat16)
    assert {p.dtype for m in (vae, text_encoder, unet) for p in m.parameters()} == {torch.bfloat16}
    pipe = load_pipeline(si2_path=path, controlnet_path=tiny_sd.controlnet_dir, dtype=torch.float32)
    assert {p.dtype for m in (pipe.vae, pipe.text_encoder, pipe.unet) for p in m.parameters()} == {torch.float32}
    folder = load_pipeline(si2_path=tiny_sd.si2_dir, controlnet_path=tiny_sd.controlnet_dir)
    diff = np.abs(_image(pipe) - _image(folder)).max()
    assert 0 < diff < 0.05  # only the fp16 rounding of the weights differs


def test_the_ckpt_form_and_an_explicit_config_folder(tiny_sd, tmp_path, no_network):  # noqa: F811
    from salient_background.models.generation.loading import load_components

    unet, vae, text_encoder, _tok, _cn = tiny_sd.load_components()
    ckpt = write_sd2_single_file(str(tmp_path / "elsewhere" / "sd2-inpainting.ckpt"), unet, vae, text_encoder,
                                 torch.float32)
    configs = copy_config_folder(tiny_sd.si2_dir, str(tmp_path / "my-configs"))
    _vae, _te, _tok2, loaded_unet, _s = load_components(ckpt, config_dir=configs)
    assert all(torch.equal(v, loaded_unet.state_dict()[k]) for k, v in unet.state_dict().items())


def test_missing_configs_name_the_download_command(tiny_sd, tmp_path):  # noqa: F811
    from salient_background.models.generation.loading import load_pipeline
    from salient_background.models.generation.model_plan import validate_base_model_path

    models = comfyui_models_dir(tiny_sd, str(tmp_path / "models"), with_configs=False)
    path = os.path.join(models, SINGLE)
    for call in (lambda: validate_base_model_path(path), lambda: load_pipeline(si2_path=path, use_controlnet=False)):
        with pytest.raises(CheckpointError) as err:
            call()
        message = str(err.value)
        assert "not found" not in message  # the file is there; what is missing is its config folder
        assert message.endswith(f"python -m salient_background download sd2-configs --models-dir {models}")
    # a partly downloaded config folder names what it lacks
    configs = copy_config_folder(tiny_sd.si2_dir, os.path.join(models, "diffusers", "stable-diffusion-2-inpainting"))
    os.remove(os.path.join(configs, "tokenizer", "vocab.json"))
    with pytest.raises(CheckpointError, match="lacks tokenizer/vocab.json"):
        validate_base_model_path(path)


def test_wrong_files_get_one_line_errors(tiny_sd, models_fp32, tmp_path):  # noqa: F811
    from safetensors.torch import load_file, save_file

    from salient_background.models.generation.loading import load_components

    from salient_background.models.generation.model_plan import validate_base_model_path

    with pytest.raises(CheckpointError, match="SD2-inpainting model not found"):
        validate_base_model_path(str(tmp_path / "missing.safetensors"))
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    with pytest.raises(CheckpointError, match="not an SD2-inpainting checkpoint"):
        validate_base_model_path(str(not_a_model))
    # an ordinary (4-channel) SD2 checkpoint next to the same configs
    state = load_file(os.path.join(models_fp32, SINGLE))
    first = "model.diffusion_model.input_blocks.0.0.weight"
    state[first] = state[first][:, :4].contiguous()
    base = os.path.join(models_fp32, "checkpoints", "sd2_base.safetensors")
    save_file(state, base)
    with pytest.raises(CheckpointError, match="has 4 input channels"):
        load_components(base)
    # a diffusers-key file (e.g. a ControlNet) is not the original layout
    with pytest.raises(CheckpointError, match="not a Stable Diffusion 2 checkpoint in the original layout"):
        load_components(tiny_sd.controlnet_safetensors, config_dir=tiny_sd.si2_dir)
