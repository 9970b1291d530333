"""The salient ControlNet for SD1.5 and SDXL inpainting inside a real ComfyUI, on random-weight models in the real
file layouts: the stock Load Checkpoint reads a full-size SD1.5-inpainting single file and an SDXL-family
(Segmind-Vega-shaped, 9-channel) inpainting single file; Load Salient ControlNet reads our exported ControlNet for
each; Salient ControlNet Conditioning -> KSampler (1-2 steps) -> decode; strength 0 and 1 give different images;
mixing bases gives one error naming both; and the control residuals equal diffusers' (SD1.5 at full size, SDXL at
Vega's depth, with SDXL's ``y``) in process.

The models (~8 GiB of memory to build, a few minutes) are built once by make_base_models.py with the server's Python
into ``SB_BASE_MODELS_DIR`` (default: <tmp>/sb_base_models) and reused. Run the whole file under
``flock /tmp/heavy.lock`` on shared machines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_base_models import CHECKPOINTS, CONTROLNETS  # noqa: E402
from test_controlnet_comfyui import _link, _our_prompt, _saved, _write_inputs  # noqa: E402

MODELS_DIR = Path(os.environ.get("SB_BASE_MODELS_DIR") or Path(tempfile.gettempdir()) / "sb_base_models")


@pytest.fixture(scope="module")
def models(comfy):
    proc = subprocess.run([comfy.python, str(HERE / "make_base_models.py"), str(comfy.root), str(MODELS_DIR)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print("[base models]", proc.stdout.strip().splitlines()[-1])
    for name in CHECKPOINTS.values():
        _link(MODELS_DIR / name, comfy.models_dir / "checkpoints" / name)
    for name in CONTROLNETS.values():
        _link(MODELS_DIR / name, comfy.models_dir / "controlnet" / name)
    return comfy


def _prompt(kind: str, prefix: str, *, strength: float = 1.0, ckpt: str | None = None, steps: int = 2) -> dict:
    p = _our_prompt(CONTROLNETS[kind], "bottle.png", prefix, strength=strength, ckpt=ckpt or CHECKPOINTS[kind])
    p["sample"]["inputs"]["steps"] = steps
    return p


@pytest.mark.parametrize("kind, steps", [("sd15", 2), ("sdxl", 1)])
def test_base_samples_and_the_controlnet_changes_the_image(models, kind, steps):
    rgb, _ = _write_inputs(models, "bottle.png", 64, 80, (16, 24, 48, 56))
    full = _prompt(kind, f"{kind}_s1", steps=steps)
    final = _saved(models, models.run(full, timeout=1800))
    assert final.shape == (64, 80, 3)  # restored to the photo's size
    assert np.abs(final[24:40, 32:48] - rgb[24:40, 32:48]).max() <= 1  # Paste Object Back
    with_cn = _saved(models, models.run(full, timeout=1800), "save_raw")
    without = _saved(models, models.run(_prompt(kind, f"{kind}_s0", strength=0.0, steps=steps), timeout=1800), "save_raw")
    diff = np.abs(with_cn - without).mean()
    print(f"[{kind} controlnet effect] mean |strength 1 - strength 0| = {diff:.2f} / 255")
    assert diff > 1.0
    log = models.log_text()
    assert "missing controlnet keys" not in log and "unexpected controlnet keys" not in log


def test_prompts_of_another_base_give_one_error_naming_both(models, comfy_error):
    """SD1.5 ControlNet, prompts and model from the SDXL checkpoint: the conditioning node stops before sampling."""
    _write_inputs(models, "bottle.png", 64, 80, (16, 24, 48, 56))
    with pytest.raises(comfy_error) as err:
        models.run(_prompt("sd15", "mixed_prompts", ckpt=CHECKPOINTS["sdxl"]), timeout=1800)
    text = str(err.value)
    print("[mixed bases, conditioning node]", next((l for l in text.splitlines() if "salient ControlNet is for" in l), text))
    assert "BaseMismatchError" in text
    assert "this salient ControlNet is for Stable Diffusion 1.5 inpainting, but the prompts' text encoder" in text
    assert "is Stable Diffusion XL inpainting" in text


def test_sampled_model_of_another_base_is_caught_before_sampling(models, comfy_error):
    """SD1.5 ControlNet and prompts, but the KSampler samples the SDXL-family model: pre_run names both bases and
    the family ComfyUI detected."""
    _write_inputs(models, "bottle.png", 64, 80, (16, 24, 48, 56))
    p = _prompt("sd15", "mixed_model", steps=1)
    p["xl"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINTS["sdxl"]}}
    p["sample"]["inputs"]["model"] = ["xl", 0]
    with pytest.raises(comfy_error) as err:
        models.run(p, timeout=1800)
    text = str(err.value)
    print("[mixed bases, sampled model]", next((l for l in text.splitlines() if "salient ControlNet is for" in l), text))
    assert "BaseMismatchError" in text
    assert ("this salient ControlNet is for Stable Diffusion 1.5 inpainting, but the sampled model is Stable Diffusion "
            "XL inpainting (ComfyUI detected Segmind_Vega)") in text


def test_control_residuals_match_diffusers_for_sd15_and_sdxl(models):
    """Our loader + ComfyUI's loading vs diffusers' ControlNetModel on the same random weights (fp32, <= 1e-4
    relative): SD1.5 at full size (ComfyUI's SD15 head layout), SDXL at Vega's depth with SDXL's added conditioning
    ``y``; and full-size SD1.5/SDXL key names and shapes as ComfyUI builds them (pinned for CI)."""
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run([models.python, str(HERE / "comfy_controlnet_parity.py"), str(models.root), work, "--bases"],
                              capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("[bases parity]", json.dumps(report))
    for run in report["parity"]:
        assert run["read_base"] == run["base"] and run["keys_equal"] and run["dtype"] == "torch.float32"
        assert run["max_rel_diff"] <= 1e-4, run
        assert run["ref_max_abs"] > 1e-2  # non-trivial residuals
        assert run["extra_conds"] == ["y", "c_concat"] and run["class"] == "SalientControlNet"
    sdxl = next(r for r in report["parity"] if r["base"] == "sdxl-inpainting")
    assert sdxl["y_effect"] > 1e-3  # y reaches the ControlNet's label_emb and changes its residuals
    checks = report["key_checks"]
    assert checks["sd15-inpainting"]["detected_as"] == "SD15" and checks["sd15-inpainting"]["num_heads"] == 8
    assert checks["sdxl-inpainting"]["detected_as"] == "SDXL" and checks["sdxl-inpainting"]["adm_in_channels"] == 2816
    assert checks["sdxl-inpainting at Segmind-Vega depth"]["detected_as"] == "Segmind_Vega"
    assert all(c["keys_and_shapes_equal"] for c in checks.values())
