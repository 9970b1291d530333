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
        shutil.copyfile(tiny_stand_in(entry, tiny_sd, inspyrenet_fast_checkpoint, tiny_single_file), target)
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
    assert cli.main(["demo", "--models-dir", str(models), "--sam", cached_checkpoint("tiny"), "--si2",
                     tiny_sd.si2_dir, "--controlnet", tiny_sd.controlnet_dir, "--output-dir",
                     str(tmp_path / "o")] + SMALL) == 2
    err = capsys.readouterr().err
    assert "1 model file(s) missing" in err and "salient/ckpt_base.pth" in err and "sams/" not in err


def test_download_fetches_the_missing_models_then_runs(tiny_sd, tiny_single_file, inspyrenet_fast_checkpoint,  # noqa: F811
                                                        tmp_path, monkeypatch, capsys):
    wanted = {m.key for m in model_registry.select(["demo"])}
    stand_in = lambda m: tiny_stand_in(m, tiny_sd, inspyrenet_fast_checkpoint, tiny_single_file)  # noqa: E731
    with serve_registry("demo", monkeypatch, stand_in) as server:
        out = tmp_path / "demo"
        code = cli.main(["demo", "--download", "--models-dir", str(tmp_path / "models"), "--output-dir", str(out)]
                        + SMALL)
        assert code == 0, capsys.readouterr().err
        assert sorted(path for path, _ in server.requests) == sorted(f"/{k}" for k in wanted)
    _check_outputs(out)


def test_tools_demo_sh_installs_the_pack_then_runs_the_demo_with_download(tmp_path):
    """tools/demo.sh against a stand-in environment whose ``python`` only records how it was called."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    fake = venv / "bin" / "python"
    fake.write_text(f'#!/bin/sh\necho "$PWD | $*" >> "{log}"\n')
    fake.chmod(0o755)
    env = dict(os.environ, SALIENT_DEMO_VENV=str(venv))
    result = subprocess.run(["bash", os.path.join(repo, "tools", "demo.sh"), "--prompt", "a red chair", "--steps", "3"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        f"{repo} | -c import torch",  # torch present: not reinstalled
        f"{repo} | -m pip install --quiet -e .",
        f"{repo} | -m salient_background demo --download --prompt a red chair --steps 3",
    ]


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
