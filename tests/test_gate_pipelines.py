"""The gate around real generators: the tiny random SD2 (with the salient ControlNet and as the plain-inpainting
baseline), SD1.5 and SDXL inpainting pipelines, loaded from files by ``load_pipeline``, scored by the tiny SAM.

What a random generator can show: each round's seeds go to the pipeline as one batch, every attempt's scores are
``score_expansion``'s on exactly the images made, and the kept image is the one the pipeline makes for that seed on
its own (so the seed recorded in the manifest reproduces it). Which image *should* win is tested on drawn shapes
in test_gate.py."""
from __future__ import annotations

import pytest
import torch

from salient_background.models.scoring import gate
from salient_background.models.scoring.expansion import score_expansion
from sb_testkit.images import object_on_background

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS, SIZE = 2, 64


@pytest.fixture(scope="module")
def sam():
    from salient_background.models.networks.sam import load_sam
    from sb_testkit.sam import cached_checkpoint

    return load_sam(cached_checkpoint("tiny")).model


def _pipeline(kind: str, tiny_sd):
    from salient_background.models.generation.loading import load_pipeline
    from sb_testkit.bases import tiny_base_folder

    if kind == "sd2+controlnet":
        return load_pipeline(tiny_sd.hf_pipeline_dir)
    base = {"sd2": "sd2-inpainting", "sd15": "sd15-inpainting", "sdxl": "sdxl-inpainting"}[kind]
    return load_pipeline(si2_path=tiny_base_folder(base), use_controlnet=False)


@pytest.mark.parametrize("kind", ["sd2+controlnet", "sd2", "sd15", "sdxl"])
def test_the_gate_keeps_a_reproducible_candidate_of_a_real_pipeline(kind, tiny_sd, sam):
    pipe = _pipeline(kind, tiny_sd)
    photo, mask = object_on_background(SIZE, SIZE, seed=4)
    calls = []

    def generate(seeds):
        calls.append(list(seeds))
        n = len(seeds)
        return pipe(photo[None].repeat(n, 1, 1, 1), mask[None].repeat(n, 1, 1), ["a table"] * n, [""] * n,
                    num_inference_steps=STEPS, generator=[torch.Generator().manual_seed(s) for s in seeds],
                    output_type="pt", show_progress=False).images

    made = []
    policy = gate.GatePolicy(candidates=3, keep=1, max_expansion=0.0, max_tries=2)
    result = gate.run_gate(generate, gate.SamGateScorer(sam, mask, points=4), policy, first_seed=5,
                           on_round=lambda attempts, images: made.append(images))
    assert calls[0] == [5, 6, 7] and calls[1:] in ([], [[8, 9, 10]])
    images = torch.cat(made)
    assert [a.score for a in result.attempts] == score_expansion(sam, images, mask[None], points=4).scores
    (kept,) = result.kept
    alone = generate([kept.seed])[0]
    assert result.images[0].shape == (SIZE, SIZE, 3)
    torch.testing.assert_close(result.images[0], alone, atol=2e-4, rtol=0)
