"""The quality gate node outside ComfyUI (the plain V1 class), on the tiny official-layout SAM checkpoint.

A random-weight SAM does not segment drawn shapes, so which image is best here is whatever the tiny SAM says; the
test recomputes every score with ``score_expansion`` and checks the node's ranking, images and JSON against that
(which candidate a real gate keeps for known expansions is tested in test_gate.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from salient_background.models.scoring.expansion import score_expansion
from salient_background.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, gate_nodes, sam_nodes
from sb_testkit.images import disk_mask, textured_image
from sb_testkit.sam import EncoderCounter, cached_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NODE_ID = "SalientBG_QualityGate"


@pytest.fixture(scope="module")
def sam():
    (handle,) = sam_nodes.SAMLoader().load(cached_checkpoint("tiny"))
    return handle


@pytest.fixture(scope="module")
def batch():
    images = torch.stack([textured_image(40, 56, seed=s) for s in range(4)])
    return images, disk_mask(40, 56, 20, 28, 9)[None]


def test_registered_with_a_fixed_seed_widget():
    cls = NODE_CLASS_MAPPINGS[NODE_ID]
    assert cls is gate_nodes.QualityGate and NODE_ID in NODE_DISPLAY_NAME_MAPPINGS
    required = cls.INPUT_TYPES()["required"]
    assert required["sam"] == ("SALIENT_BG_SAM",)
    assert required["seed"][1]["control_after_generate"] is False  # the frontend would randomise it otherwise
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY.startswith("Salient Background/")


@pytest.mark.parametrize("max_expansion", [0.0, 100.0])
def test_ranks_the_batch_by_the_expansion_score(sam, batch, max_expansion):
    images, mask = batch
    with EncoderCounter(sam.module()) as counter:
        out = gate_nodes.QualityGate().rank(sam, images, mask, max_expansion, points=5, seed=2, mask_choice="auto")
    assert counter.calls == 4  # one embedding per image
    ranked, best, text = out["result"]
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    expected = score_expansion(sam.module(), images, mask, points=5, seed=2).scores
    key = lambda i: (expected[i].expansion_relative, -expected[i].iou, i)  # noqa: E731
    order = sorted(range(4), key=key)
    assert [row["batch_index"] for row in report["images"]] == order
    assert [row["rank"] for row in report["images"]] == [0, 1, 2, 3]
    for row in report["images"]:
        score = expected[row["batch_index"]]
        assert row["expansion_px"] == score.expansion_px and row["iou"] == pytest.approx(score.iou)
        assert row["passed"] is (score.expansion_relative <= max_expansion)
    assert torch.equal(ranked, images[order]) and torch.equal(best, images[order[:1]])
    assert report["best_index"] == order[0]
    assert report["gate_failed"] is not (expected[order[0]].expansion_relative <= max_expansion)
    assert report["passed"] == sum(s.expansion_relative <= max_expansion for s in expected)
    assert report["max_expansion"] == max_expansion and report["sam"] == sam.variant
    assert out["ui"]["text"][0].startswith(f"best: image {order[0] + 1} of 4")


def test_an_empty_mask_ranks_every_image_undefined_and_fails(sam, batch):
    images, _ = batch
    out = gate_nodes.QualityGate().rank(sam, images[:2], torch.zeros(1, 40, 56), 0.05, 4, 0, "auto")
    report = json.loads(out["result"][2])
    assert [row["expansion_relative"] for row in report["images"]] == [None, None]
    assert report["gate_failed"] is True and report["passed"] == 0
    assert not math.isnan(float(out["result"][1].sum()))
