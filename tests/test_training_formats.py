"""Runs left on disk by an earlier trainer still resume: ``tests/data/training_v1`` (made by its ``make_fixture.py``
with the trainer of December 2026) is a run stopped after 2 of 3 steps, with its checkpoint and latent cache.
Today's code resumes it, reuses the cache and ends where that trainer ended (to float rounding)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil

import pytest
from safetensors.torch import load_file

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "training_v1")


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_training_v1", os.path.join(FIXTURE, "make_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file_digests(folder: str) -> dict:
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The step's learning rate is 1e-3: a resume that lost the optimizer state, the EMA or the RNG moves weights by about
# that much; another processor's math kernels move them by a few 1e-6 (measured 4.3e-6 across MKL's code paths).
WEIGHT_TOLERANCE = 5e-5
CAPTION_TOLERANCE = 1e-5


def _assert_same_tensors(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        tolerance = CAPTION_TOLERANCE if name.startswith("caption.") else WEIGHT_TOLERANCE
        worst = float((got[name].float() - want.float()).abs().max())
        assert worst <= tolerance, f"{name}: differs by {worst:.3g} (tolerance {tolerance:g})"


def test_a_run_from_the_earlier_trainer_resumes_bitwise(tmp_path):
    from salient_background.training.train import TrainConfig

    script = _fixture_script()
    expected = json.load(open(os.path.join(FIXTURE, "expected.json")))
    root = str(tmp_path / "training_v1")
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*.py", "expected.json", "__pycache__"))
    script.relocate_latent_cache(root)
    cache = os.path.join(root, "run", "latent_cache")
    before = _file_digests(cache)
    stamps = {n: os.path.getmtime(os.path.join(cache, n)) for n in before if n.endswith(".safetensors")}
    assert len(stamps) == 4

    result = script.run(TrainConfig(resume_from="latest", **script.train_kwargs(root)))

    assert [s for s, _ in result.losses] == expected["resumed_steps"] == [3]
    assert [loss for _, loss in result.losses] == pytest.approx(expected["losses"], rel=1e-6)
    _assert_same_tensors(script.final_tensors(result, root), load_file(os.path.join(FIXTURE, "expected_weights.safetensors")))
    # the latent cache was reused as it was, not rebuilt
    assert _file_digests(cache) == before
    assert all(os.path.getmtime(os.path.join(cache, n)) == t for n, t in stamps.items())
    assert os.path.isfile(os.path.join(root, "run", "controlnet", "diffusion_pytorch_model.safetensors"))
