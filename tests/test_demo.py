"""``python -m salient_background demo``: mask -> generate -> evaluate on the shipped example photo, one command.

Run end to end on tiny random models laid out as ComfyUI's models folder (SD2 as the single file + its config
folder, the ControlNet folder, InSPyReNet, SAM), with ``--download`` against a local "hub" serving those files with
their real checksums, and without models (exit 2, the missing files and the exact command, nothing written).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket

import pytest
from PIL import Image

from salient_background import cli
from salient_background.models.model_files import model_registry
from sb_testkit.files import link_or_copy
from sb_testkit.local_hub import local_hub as serve_registry, tiny_stand_in
from sb_testkit.sam import cached_checkpoint
from sb_testkit.sd_single_file import comfyui_models_dir

SMALL = ["--size", "64", "--steps", "2", "--device", "cpu", "--no-progress", "--salient-mode", "fast"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_single_file(tiny_sd, tmp_path_factory):  # noqa: F811
    root = comfyui_models_dir(tiny_sd, str(tmp_path_factory.mktemp("sf")), with_configs=False)
    return os.path.join(root, "checkpoints", "512-inpainting-ema.safetensors")


@pytest.fixture
def tiny_models_dir(tiny_sd, tiny_single_file, inspyrenet_fast_checkpoint, tmp_path):  # noqa: F811
    """``download demo`` already done: every file of the selection where it would have put it."""
    models = tmp_path / "models"
    for entry in model_registry.select(["demo"]):
        target = models / model_registry.FOLDER_DEFAULT_SUBDIRS[entry.folder] / entry.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(tiny_stand_in(entry, tiny_sd, inspyrenet_fast_checkpoint, tiny_single_file), target)
    return str(models)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _check_outputs(out):
    generated = out / "generate" / "generated" / "example_product_s0.png"
    with Image.open(generated) as im:
        assert im.size == (64, 64)
    with Image.open(out / "mask" / "example_product_mask.png") as im:
        assert im.size == (512, 512)  # the mask step runs on the photo itself
    with open(out / "evaluate" / "expansion.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["generated"].endswith("example_product_s0.png")
    assert float(rows[0]["expansion_relative"]) >= 0
    assert json.load(open(out / "evaluate" / "summary.json"))


def test_demo_runs_the_main_job_on_the_example(tiny_models_dir, tmp_path, no_network, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--models-dir", tiny_models_dir, "--output-dir", str(out)] + SMALL)
    assert code == 0, capsys.readouterr().err
    _check_outputs(out)
    # generate read SD2 from the single file ComfyUI uses, with the mask the mask step wrote
    settings = json.load(open(out / "generate" / "manifest.json"))["settings"]
    assert settings["si2"].endswith(os.path.join("checkpoints", "512-inpainting-ema.safetensors"))
    assert "done: the new picture is" in capsys.readouterr().out


def test_without_models_and_without_download_it_prints_what_is_missing_and_the_command(tmp_path, no_network, capsys):
    models, out = str(tmp_path / "no-models"), tmp_path / "demo"
    os.mkdir(models)  # an empty models folder
    assert cli.main(["demo", "--models-dir", models, "--output-dir", str(out)] + SMALL) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.rstrip().endswith(f"(or: python -m salient_background download demo --models-dir {models})")
    assert f"python -m salient_background demo --download --models-dir {models}" in err
    for entry in model_registry.select(["demo"]):
        assert f"{entry.folder}/{entry.filename}" in err
    assert not out.exists()  # nothing ran


def test_overrides_replace_missing_files(tiny_sd, tmp_path, capsys):  # noqa: F811
    """Only the SAM file is missing; --sam given -> only the rest is looked for, and the one missing is named."""
    models = tmp_path / "models"
    models.mkdir()
    assert cli.main(["demo", "--models-dir", str(models), "--sam", cached_checkpoint("tiny"), "--base-model",
                     tiny_sd.si2_dir, "--controlnet", tiny_sd.controlnet_dir, "--output-dir",
                     str(tmp_path / "o")] + SMALL) == 2
    err = capsys.readouterr().err
    assert "1 model file(s) missing" in err and "salient/ckpt_base.pth" in err and "sams/" not in err


def _models_folder(tmp_path, tiny_sd, inspyrenet_path, *, sam=True):  # noqa: F811
    """A models folder holding InSPyReNet (and SAM) where ``download demo`` puts them; the rest is up to the test."""
    models = tmp_path / "models"
    (models / "salient").mkdir(parents=True)
    link_or_copy(inspyrenet_path, models / "salient" / "ckpt_base.pth")
    if sam:
        (models / "sams").mkdir()
        link_or_copy(cached_checkpoint("tiny"), models / "sams" / "sam_vit_b_01ec64.pth")
    return models


def test_demo_runs_on_the_forms_the_loaders_read_sd2_diffusers_folder_and_a_bin_controlnet(
        tiny_sd, inspyrenet_fast_checkpoint, tmp_path, no_network, capsys):  # noqa: F811
    """No single file and no .safetensors ControlNet: SD2 as the diffusers folder (what ``download generate`` writes)
    and the ControlNet folder with diffusion_pytorch_model.bin. Both are what the loaders read: the demo runs."""
    models = _models_folder(tmp_path, tiny_sd, inspyrenet_fast_checkpoint)
    shutil.copytree(tiny_sd.si2_dir, models / "diffusers" / "stable-diffusion-2-inpainting")
    shutil.copytree(tiny_sd.controlnet_bin_dir, models / "controlnet" / "photo-background-generation")
    assert sorted(os.listdir(models / "controlnet" / "photo-background-generation")) == [
        "config.json", "diffusion_pytorch_model.bin"]
    out = tmp_path / "demo"
    code = cli.main(["demo", "--models-dir", str(models), "--output-dir", str(out)] + SMALL)
    assert code == 0, capsys.readouterr().err
    _check_outputs(out)
    settings = json.load(open(out / "generate" / "manifest.json"))["settings"]
    assert settings["si2"] == str(models / "diffusers" / "stable-diffusion-2-inpainting")
    assert settings["controlnet"] == str(models / "controlnet" / "photo-background-generation")


def test_single_file_with_configs_beside_it_and_the_released_pth_count_and_only_what_lacks_is_listed(
        tiny_sd, tiny_single_file, inspyrenet_fast_checkpoint, tmp_path, no_network, capsys):  # noqa: F811
    """The single file with its config folder beside it (where the loader looks first) and the authors'
    controlnet_inpainting_salient_aware.pth in controlnet/: only SAM is missing, and only --sam is suggested."""
    from sb_testkit.sd_single_file import copy_config_folder

    models = _models_folder(tmp_path, tiny_sd, inspyrenet_fast_checkpoint, sam=False)
    (models / "checkpoints").mkdir()
    link_or_copy(tiny_single_file, models / "checkpoints" / "512-inpainting-ema.safetensors")
    copy_config_folder(tiny_sd.si2_dir, str(models / "checkpoints" / "stable-diffusion-2-inpainting"))
    (models / "controlnet").mkdir()
    released = next(iter(tiny_sd.controlnet_pth.values()))
    link_or_copy(released, models / "controlnet" / "controlnet_inpainting_salient_aware.pth")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--models-dir", str(models), "--output-dir", str(out)] + SMALL) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "1 model file(s) missing" in err
    listed = [line.split()[0] for line in err.split("missing in", 1)[1].splitlines()[1:] if line.startswith("  ")
              and "/" in line.split()[0] and not line.strip().startswith("--")]
    assert listed == ["sams/sam_vit_b_01ec64.pth"]
    assert "--sam PATH" in err and "--controlnet PATH" not in err and "--si2 PATH" not in err
    assert f"(or: python -m salient_background download sam-vit-b --models-dir {models})" in err
    assert not out.exists()


def test_a_single_file_without_its_configs_asks_for_the_configs_only_and_names_the_options(
        tiny_sd, tiny_single_file, inspyrenet_fast_checkpoint, tmp_path, no_network, capsys):  # noqa: F811
    models = _models_folder(tmp_path, tiny_sd, inspyrenet_fast_checkpoint)
    (models / "checkpoints").mkdir()
    link_or_copy(tiny_single_file, models / "checkpoints" / "512-inpainting-ema.safetensors")
    shutil.copytree(tiny_sd.controlnet_dir, models / "controlnet" / "photo-background-generation")
    assert cli.main(["demo", "--models-dir", str(models), "--output-dir", str(tmp_path / "o")] + SMALL) == 2
    err = capsys.readouterr().err
    configs = model_registry.select(["sd2-configs"])
    assert f"{len(configs)} model file(s) missing" in err
    assert all(f"diffusers/{m.filename}" in err for m in configs) and "checkpoints/512-inpainting-ema" not in err
    assert "--si2 PATH (or --base-model)" in err and "--controlnet PATH" not in err
    assert f"(or: python -m salient_background download sd2-configs --models-dir {models})" in err


def test_a_models_dir_that_does_not_exist_is_refused_not_offered_a_download(tmp_path, no_network, capsys):
    typo = tmp_path / "ComfyUI" / "modles"
    assert cli.main(["demo", "--models-dir", str(typo), "--output-dir", str(tmp_path / "o")] + SMALL) == 2
    err = capsys.readouterr().err
    assert f"--models-dir {str(typo)!r} does not exist" in err and "--create-models-dir" in err
    assert "--download" not in err and "GB" not in err
    assert not typo.parent.exists() and not (tmp_path / "o").exists()
    # asked to create it: the usual list, and the commands it prints create the folder too
    assert cli.main(["demo", "--models-dir", str(typo), "--create-models-dir", "--output-dir", str(tmp_path / "o")]
                    + SMALL) == 2
    err = capsys.readouterr().err
    assert f"demo --download --models-dir {typo} --create-models-dir" in err
    assert err.rstrip().endswith(f"download demo --models-dir {typo} --create-models-dir)")
    assert not typo.exists()  # only a download creates it


def test_download_fetches_the_missing_models_then_runs(tiny_sd, tiny_single_file, inspyrenet_fast_checkpoint,  # noqa: F811
                                                        tmp_path, monkeypatch, capsys):
    wanted = {m.key for m in model_registry.select(["demo"])}
    stand_in = lambda m: tiny_stand_in(m, tiny_sd, inspyrenet_fast_checkpoint, tiny_single_file)  # noqa: E731
    monkeypatch.chdir(tmp_path)  # the default models folder, outputs/models, is the demo's own: it may be created
    with serve_registry("demo", monkeypatch, stand_in) as server:
        out = tmp_path / "demo"
        code = cli.main(["demo", "--download", "--output-dir", str(out)] + SMALL)
        assert code == 0, capsys.readouterr().err
        assert sorted(path for path, _ in server.requests) == sorted(f"/{k}" for k in wanted)
    _check_outputs(out)
    assert (tmp_path / "outputs" / "models" / "sams" / "sam_vit_b_01ec64.pth").is_file()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _run_demo_sh(tmp_path, *args, torch_installed=True, nvidia_smi=False, **env_vars):
    """tools/demo.sh against a stand-in environment whose ``python`` only records how it was called (and says torch
    is missing when ``torch_installed`` is false); ``nvidia_smi``: an ``nvidia-smi`` on the PATH. Returns the result
    and the recorded calls."""
    import subprocess

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    log.touch()
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    fake = venv / "bin" / "python"
    no_torch = '[ "$*" = "-c import torch" ] && exit 1\n' if not torch_installed else ""
    fake.write_text(f'#!/bin/sh\necho "$PWD | $*" >> "{log}"\n{no_torch}exit 0\n')
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    if nvidia_smi:
        (stubs / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (stubs / "nvidia-smi").chmod(0o755)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALIENT_DEMO_")}
    env.update(SALIENT_DEMO_VENV=str(venv), PATH=f"{stubs}:/usr/bin:/bin", **env_vars)
    result = subprocess.run(["bash", os.path.join(REPO, "tools", "demo.sh"), *args],
                            env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines()


def test_tools_demo_sh_installs_the_pack_then_runs_the_demo_with_download(tmp_path):
    result, calls = _run_demo_sh(tmp_path, "--prompt", "a red chair", "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert calls == [
        f"{REPO} | -c import torch",  # torch present: not reinstalled
        f"{REPO} | -m pip install --quiet -e .",
        f"{REPO} | -m salient_background demo --download --prompt a red chair --steps 3",
    ]


no_gpu_here = pytest.mark.skipif(shutil.which("nvidia-smi", path="/usr/bin:/bin") is not None
                                 or os.path.exists("/proc/driver/nvidia"), reason="this machine has an NVIDIA GPU")


@no_gpu_here
def test_tools_demo_sh_installs_the_cpu_torch_build_without_an_nvidia_gpu(tmp_path):
    result, calls = _run_demo_sh(tmp_path, torch_installed=False)
    assert result.returncode == 0, result.stderr
    assert calls[1] == f"{REPO} | -m pip install --quiet --index-url {CPU_INDEX} torch torchvision"
    assert "the CPU build" in result.stdout and "no NVIDIA GPU found" in result.stdout


def test_tools_demo_sh_installs_pypis_default_torch_when_nvidia_smi_is_there(tmp_path):
    result, calls = _run_demo_sh(tmp_path, torch_installed=False, nvidia_smi=True)
    assert result.returncode == 0, result.stderr
    assert calls[1] == f"{REPO} | -m pip install --quiet torch torchvision"
    assert "an NVIDIA GPU is present" in result.stdout


@pytest.mark.parametrize("variant, gpu, options", [("cpu", True, f"--index-url {CPU_INDEX} "), ("cuda", False, "")])
def test_tools_demo_sh_torch_variant_overrides_the_detection(tmp_path, variant, gpu, options):
    result, calls = _run_demo_sh(tmp_path, torch_installed=False, nvidia_smi=gpu, SALIENT_DEMO_TORCH_VARIANT=variant,
                                 SALIENT_DEMO_TORCH="torch")
    assert result.returncode == 0, result.stderr
    assert calls[1] == f"{REPO} | -m pip install --quiet {options}torch"


def test_tools_demo_sh_refuses_an_unknown_torch_variant_before_installing_anything(tmp_path):
    result, calls = _run_demo_sh(tmp_path, torch_installed=False, SALIENT_DEMO_TORCH_VARIANT="rocm")
    assert result.returncode != 0 and "must be auto, cpu or cuda (it is 'rocm')" in result.stderr
    assert calls == []


def test_readme_quick_start_shows_one_command_for_the_main_job_and_one_for_the_tests():
    import re

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(repo, "README.md"), encoding="utf-8").read()
    quick = readme.split("<!-- section: quickstart -->", 1)[1].split("<!-- /section: quickstart -->", 1)[0]
    top_level = quick.split("<details>", 1)[0] + quick.split("</details>", 1)[1]  # the by-hand steps are folded
    assert re.findall(r"```bash\n(.*?)```", top_level, flags=re.S) == ["bash tools/demo.sh\n", "bash .ci/run\n"]
    assert "RAM" in top_level and "per denoising step" in top_level
    install = readme.split("## Install", 1)[1].split("<!-- section:", 1)[0]
    assert "search for" not in install.split("Once it is")[0]  # no claim that it is listed today
    assert "<this repository>" not in install and "github.com" not in install
