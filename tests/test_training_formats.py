"""Runs left on disk by an earlier trainer still resume: ``tests/data/training_v1`` (made by its ``make_fixture.py``
with the trainer of December 2026) is a run stopped after 2 of 3 steps, with its checkpoint and latent cache.
Today's code resumes it, reuses the cache and ends exactly where that trainer ended."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil

import pytest

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
    assert [loss for _, loss in result.losses] == expected["losses"]
    assert script.digest(result.controlnet.state_dict()) == expected["controlnet_sha256"]
    assert script.digest(result.ema.shadow) == expected["ema_sha256"]
    # the latent cache was reused as it was, not rebuilt
    assert _file_digests(cache) == before
    assert all(os.path.getmtime(os.path.join(cache, n)) == t for n, t in stamps.items())
    # the caption-embedding table (in memory only) is the one the earlier trainer built
    assert script.caption_table_digest(root) == expected["caption_table_sha256"]
    assert os.path.isfile(os.path.join(root, "run", "controlnet", "diffusion_pytorch_model.safetensors"))
