"""The quality gate's policy (models/scoring/gate.py) on a stub generator whose candidates have known expansions.

The generator draws the object (a 16x16 red square, 256 px) on a grey background and, per seed, a red band of a
known width w to its right (16*w px of expansion, w/16 of the object) and optionally erases the object's top rows
(lost pixels, a lower IoU at the same expansion). The policy decisions are tested with a colour segmenter feeding
the real metric (``expansion_from_masks``): a random-weight SAM (the only SAM tests may use) does not segment
drawn shapes, so its masks say nothing about which candidate expanded. The SAM path itself is tested on the tiny
SAM: the gate's scorer gives exactly what ``score_expansion`` gives, one image embedding per candidate.
"""
from __future__ import annotations

import json

import pytest
import torch

from salient_background.models.errors import InputError
from salient_background.models.scoring import gate
from salient_background.models.scoring.expansion import expansion_from_masks, score_expansion
from sb_testkit.images import rect_mask, textured_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, TOP, LEFT, SIDE = 48, 16, 8, 16
OBJECT = rect_mask(SIZE, SIZE, TOP, LEFT, TOP + SIDE, LEFT + SIDE)  # 256 px
RED = torch.tensor([0.9, 0.1, 0.1])


class StubGenerator:
    """Seed -> picture with a known expansion: ``widths[seed]`` columns of object colour right of the object, and
    ``lost[seed]`` top rows of the object painted background. Logs every call's seeds."""

    def __init__(self, widths: dict, lost: dict | None = None, default_width: int = 12):
        self.widths, self.lost, self.default = widths, lost or {}, default_width
        self.calls: list[list[int]] = []

    def picture(self, seed: int) -> torch.Tensor:
        w, lost = self.widths.get(seed, self.default), self.lost.get(seed, 0)
        shape = (rect_mask(SIZE, SIZE, TOP + lost, LEFT, TOP + SIDE, LEFT + SIDE)
                 + rect_mask(SIZE, SIZE, TOP, LEFT + SIDE, TOP + SIDE, LEFT + SIDE + w))
        background = torch.full((SIZE, SIZE, 3), 0.5)
        return background * (1 - shape[..., None]) + RED * shape[..., None]

    def __call__(self, seeds):
        self.calls.append(list(seeds))
        return torch.stack([self.picture(s) for s in seeds])


def colour_scorer(images):
    """Object = red pixels; the real metric on that mask."""
    red = (images[..., 0] > 0.7) & (images[..., 1] < 0.3)
    return [expansion_from_masks(OBJECT, red[i]) for i in range(images.shape[0])]


def test_keeps_the_least_expanded_and_breaks_ties_by_iou():
    # seeds 10..13: widths 6, 2, 9, 2; seed 11 also lost 2 object rows -> same expansion as 13, lower IoU
    generator = StubGenerator({10: 6, 11: 2, 12: 9, 13: 2}, lost={11: 2})
    policy = gate.GatePolicy(candidates=4, keep=2)
    result = gate.run_gate(generator, colour_scorer, policy, first_seed=10)
    assert generator.calls == [[10, 11, 12, 13]]  # one batch
    assert [a.seed for a in result.kept] == [13, 11]
    assert result.kept[0].score.iou > result.kept[1].score.iou
    assert [a.score.expansion_px for a in result.attempts] == [16 * 6, 16 * 2, 16 * 9, 16 * 2]
    assert [a.rank for a in result.attempts] == [2, 1, 3, 0]
    assert [a.kept for a in result.attempts] == [False, True, False, True]
    for image, attempt in zip(result.images, result.kept):
        assert torch.equal(image, generator.picture(attempt.seed))
    assert result.status == gate.UNGATED and result.rounds == 1


def test_without_a_threshold_one_round_is_made_whatever_the_scores():
    generator = StubGenerator({}, default_width=30)
    result = gate.run_gate(generator, colour_scorer, gate.GatePolicy(candidates=2, max_tries=5), first_seed=0)
    assert generator.calls == [[0, 1]]
    assert result.record()["gate_failed"] is False and result.status == gate.UNGATED


def test_retries_with_new_seeds_until_one_passes():
    # threshold 0.1 of the object = 25.6 px: width 1 (16 px) passes, width 2 (32 px) does not
    generator = StubGenerator({0: 4, 1: 5, 2: 3, 3: 1, 4: 0, 5: 0})
    policy = gate.GatePolicy(candidates=2, keep=1, max_expansion=0.1, max_tries=5)
    result = gate.run_gate(generator, colour_scorer, policy, first_seed=0)
    assert generator.calls == [[0, 1], [2, 3]]  # stopped as soon as one passed
    assert [a.passed for a in result.attempts] == [False, False, False, True]
    assert [a.round for a in result.attempts] == [0, 0, 1, 1]
    assert [a.seed for a in result.kept] == [3]
    assert result.status == gate.PASSED and result.rounds == 2
    assert torch.equal(result.images[0], generator.picture(3))


def test_keep_two_needs_two_passes():
    generator = StubGenerator({0: 1, 1: 5, 2: 4, 3: 0})
    policy = gate.GatePolicy(candidates=2, keep=2, max_expansion=0.1, max_tries=4)
    result = gate.run_gate(generator, colour_scorer, policy, first_seed=0)
    assert generator.calls == [[0, 1], [2, 3]]
    assert [a.seed for a in result.kept] == [3, 0] and result.status == gate.PASSED


def test_an_item_that_never_passes_keeps_its_best_attempt_flagged():
    generator = StubGenerator({0: 9, 1: 7, 2: 8, 3: 5, 4: 6, 5: 11})
    policy = gate.GatePolicy(candidates=2, max_expansion=0.05, max_tries=3)
    result = gate.run_gate(generator, colour_scorer, policy, first_seed=0)
    assert generator.calls == [[0, 1], [2, 3], [4, 5]]
    assert len(result.attempts) == 6 and not any(a.passed for a in result.attempts)
    assert [a.seed for a in result.kept] == [3]
    assert torch.equal(result.images[0], generator.picture(3))
    record = result.record()
    assert record["status"] == "gate_failed" and record["gate_failed"] is True
    assert record["kept_seeds"] == [3] and record["rounds"] == 3


def test_every_attempt_is_recorded_with_its_seed_and_scores_as_strict_json():
    generator = StubGenerator({5: 3, 6: 0, 7: 2}, lost={6: 1})
    result = gate.run_gate(generator, colour_scorer, gate.GatePolicy(candidates=3, max_expansion=0.2), first_seed=5)
    record = json.loads(json.dumps(result.record(), allow_nan=False))
    rows = record["attempts"]
    assert [r["seed"] for r in rows] == [5, 6, 7]
    assert [r["expansion_px"] for r in rows] == [48.0, 0.0, 32.0]
    assert [r["expansion_relative"] for r in rows] == [48 / 256, 0.0, 32 / 256]
    assert [r["lost_px"] for r in rows] == [0.0, 16.0, 0.0]
    assert rows[1]["iou"] == pytest.approx(240 / 256)
    assert [r["passed"] for r in rows] == [True, True, True]
    assert [(r["kept"], r["rank"]) for r in rows] == [(False, 2), (True, 0), (False, 1)]
    assert record["policy"] == {"candidates": 3, "keep": 1, "max_expansion": 0.2, "max_tries": 3}


def test_undefined_scores_never_pass_and_rank_last():
    nan = gate.Attempt.from_record({"attempt": 0, "round": 0, "seed": 0, "width": 4, "height": 4, "object_px": 0,
                                    "sam_px": 0, "expansion_px": None, "expansion_image_fraction": None,
                                    "expansion_relative": None, "lost_px": None, "iou": None, "sam_score": None})
    fine = gate.attempts_from_scores(colour_scorer(StubGenerator({1: 30})([1])), [1],
                                     gate.GatePolicy(max_expansion=10.0), first_index=1)[0]
    assert gate.GatePolicy(max_expansion=10.0).passes(nan.score) is False
    assert [a.seed for a in gate.rank_attempts([nan, fine])] == [1, 0]


class Killed(Exception):
    pass


def test_resume_continues_after_the_recorded_rounds_without_regenerating_them():
    widths = {0: 9, 1: 7, 2: 8, 3: 1, 4: 0, 5: 0}
    policy = gate.GatePolicy(candidates=2, max_expansion=0.1, max_tries=3)
    whole = gate.run_gate(StubGenerator(widths), colour_scorer, policy, first_seed=0)

    journal, saved = [], {}

    def save_then_die(attempts, images):  # what the command does after a round: files, then records
        saved.update((a.seed, images[i].clone()) for i, a in enumerate(attempts))
        journal.extend(a.record() for a in attempts)
        raise Killed

    with pytest.raises(Killed):
        gate.run_gate(StubGenerator(widths), colour_scorer, policy, first_seed=0, on_round=save_then_die)
    assert [r["seed"] for r in journal] == [0, 1]

    generator = StubGenerator(widths)
    previous = [gate.Attempt.from_record(json.loads(json.dumps(r))) for r in journal]
    resumed = gate.run_gate(generator, colour_scorer, policy, first_seed=0, previous=previous,
                            recall=lambda a: saved[a.seed])
    assert generator.calls == [[2, 3]]
    assert resumed.record() == whole.record()
    assert all(torch.equal(a, b) for a, b in zip(resumed.images, whole.images))


def test_resume_recalls_a_kept_image_made_by_the_earlier_run():
    widths = {0: 1, 1: 7, 2: 8, 3: 9}
    policy = gate.GatePolicy(candidates=2, keep=2, max_expansion=0.1, max_tries=2)
    first = gate.run_gate(StubGenerator(widths), colour_scorer, gate.GatePolicy(candidates=2, keep=2, max_expansion=0.1,
                                                                                 max_tries=1), first_seed=0)
    previous = [gate.Attempt.from_record(r) for r in first.record()["attempts"]]
    recalled = []
    result = gate.run_gate(StubGenerator(widths), colour_scorer, policy, first_seed=0, previous=previous,
                           recall=lambda a: recalled.append(a.seed) or StubGenerator(widths).picture(a.seed))
    assert [a.seed for a in result.kept] == [0, 1] and recalled == [0, 1]
    with pytest.raises(ValueError, match="recall"):
        gate.run_gate(StubGenerator(widths), colour_scorer, policy, first_seed=0, previous=previous)
    with pytest.raises(ValueError, match="whole rounds"):
        gate.run_gate(StubGenerator(widths), colour_scorer, policy, first_seed=7, previous=previous)


@pytest.mark.parametrize("options, word", [
    (dict(candidates=0), "--candidates"), (dict(candidates=2, keep=3), "--keep"), (dict(keep=0), "--keep"),
    (dict(max_expansion=-0.1), "--max-expansion"), (dict(max_expansion=float("nan")), "--max-expansion"),
    (dict(max_tries=0), "--max-tries"),
])
def test_bad_policies_are_refused_with_the_option_named(options, word):
    with pytest.raises(InputError, match=word):
        gate.GatePolicy(**options)


def test_a_generator_returning_the_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="3 images for 2 seeds"):
        gate.run_gate(lambda seeds: torch.zeros(3, SIZE, SIZE, 3), colour_scorer, gate.GatePolicy(candidates=2), 0)


def test_summary_counts_passes_retries_and_failures():
    passed_first = gate.run_gate(StubGenerator({0: 0}), colour_scorer, gate.GatePolicy(max_expansion=0.1), 0)
    passed_retry = gate.run_gate(StubGenerator({0: 5, 1: 0}), colour_scorer, gate.GatePolicy(max_expansion=0.1), 0)
    failed = gate.run_gate(StubGenerator({}), colour_scorer, gate.GatePolicy(max_expansion=0.1, max_tries=2), 0)
    ungated = gate.run_gate(StubGenerator({}), colour_scorer, gate.GatePolicy(candidates=2), 0)
    counts = gate.summarise([r.record() for r in (passed_first, passed_retry, failed, ungated)])
    assert counts == dict(items=4, passed=2, gate_failed=1, ungated=1, retried_items=2, retry_rounds=2,
                          attempts=1 + 2 + 2 + 2, kept=4)
    assert "2 passed, 1 gate_failed" in gate.summary_line(counts)


# ---------------------------------------------------------------------------------------------- the SAM scorer
@pytest.fixture(scope="module")
def tiny_sam():
    from salient_background.models.networks.sam import load_sam
    from sb_testkit.sam import cached_checkpoint

    return load_sam(cached_checkpoint("tiny")).model


def test_sam_scorer_equals_score_expansion_with_one_embedding_per_candidate(tiny_sam):
    from sb_testkit.sam import EncoderCounter

    def generate(seeds):
        return torch.stack([textured_image(SIZE, SIZE, seed=s) for s in seeds])

    scorer = gate.SamGateScorer(tiny_sam, OBJECT, points=4, seed=3)
    policy = gate.GatePolicy(candidates=3, max_expansion=0.0, max_tries=2)
    with EncoderCounter(tiny_sam) as counter:
        result = gate.run_gate(generate, scorer, policy, first_seed=20)
    assert counter.calls == len(result.attempts)
    images = generate([a.seed for a in result.attempts])
    expected = score_expansion(tiny_sam, images, OBJECT[None], points=4, seed=3).scores
    assert [a.score for a in result.attempts] == expected


def test_sam_scorer_refuses_an_empty_mask(tiny_sam):
    with pytest.raises(InputError, match="empty"):
        gate.SamGateScorer(tiny_sam, torch.zeros(SIZE, SIZE))
