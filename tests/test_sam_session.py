"""SAM sessions on the tiny official-layout model: prompt coordinates by hand, one embedding per image,
the mask-choice rule, refinement modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from salient_background.models.networks.sam import (
    PromptSet,
    SamImageSession,
    choose_output,
    combine_masks,
    load_sam,
    prompts_from_mask,
    refine_masks,
    uses_multimask,
)
from sb_testkit.images import disk_mask, object_on_background, textured_image
from sb_testkit.sam import EncoderCounter, cached_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_sam(cached_checkpoint("tiny")).model


class PromptSpy:
    """Records what reaches SAM's prompt encoder (points and boxes in the 1024-pixel model frame)."""

    def __init__(self, model):
        self.calls = []
        self._h = model.prompt_encoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        points = kwargs.get("points", args[0] if args else None)
        boxes = kwargs.get("boxes", args[1] if len(args) > 1 else None)
        self.calls.append((None if points is None else points[0].clone(), None if boxes is None else boxes.clone()))

    def remove(self):
        self._h.remove()


# (H, W), point (x, y), expected (x', y') in SAM's frame, worked out by hand:
# the long side becomes 1024, the short side round(short * 1024 / long); x' = x * W'/W, y' = y * H'/H.
HAND_CASES = [
    ((100, 200), (50, 25), (256.0, 128.0)),  # W'=1024, H'=512 (factor 5.12)
    ((600, 800), (400, 300), (512.0, 384.0)),  # W'=1024, H'=768 (factor 1.28)
    ((333, 500), (250, 111), (512.0, 111 * 682 / 333)),  # H' = int(333 * 2.048 + 0.5) = 682 -> 227.333...
    ((1024, 512), (10, 1000), (10.0, 1000.0)),  # already 1024 long: unchanged
    ((64, 48), (0, 63), (0.0, 1008.0)),  # upscaled: factor 16 (H'=1024, W'=768)
]


@pytest.mark.parametrize("size,point,expected", HAND_CASES)
def test_prompt_coordinates_reach_sam_as_computed_by_hand(tiny, size, point, expected):
    h, w = size
    session = SamImageSession(tiny, textured_image(h, w, seed=1))
    spy = PromptSpy(tiny)
    try:
        session.predict(PromptSet(points=np.array([point], np.float32), labels=np.array([1])))
    finally:
        spy.remove()
    pts, _ = spy.calls[0]
    assert pts.shape == (1, 1, 2)
    assert pts[0, 0].tolist() == pytest.approx(expected, abs=1e-3)


def test_box_coordinates_by_hand(tiny):
    session = SamImageSession(tiny, textured_image(100, 200, seed=1))
    spy = PromptSpy(tiny)
    try:
        session.predict(PromptSet(points=np.zeros((0, 2), np.float32), labels=np.zeros(0, np.int64),
                                  box=np.array([10, 20, 110, 60], np.float32)))
    finally:
        spy.remove()
    _, boxes = spy.calls[0]
    assert boxes.flatten().tolist() == pytest.approx([51.2, 102.4, 563.2, 307.2], abs=1e-3)  # x*5.12, y*5.12


def test_embedding_is_computed_once_per_image(tiny):
    image, mask = object_on_background(80, 120)
    with EncoderCounter(tiny) as counter:
        session = SamImageSession(tiny, image)
        for seed in range(5):
            session.predict(prompts_from_mask(mask, 3, seed))
        assert counter.calls == 1
    from salient_background.models.scoring.expansion import score_expansion

    with EncoderCounter(tiny) as counter:
        run = score_expansion(tiny, image[None].expand(4, -1, -1, -1), mask, points=4)
    assert counter.calls == 4 and len(run.scores) == 4
    with EncoderCounter(tiny) as counter:
        refine_masks(tiny, image[None].expand(3, -1, -1, -1), mask, points=4)
    assert counter.calls == 3


def test_prompts_are_sampled_once_for_a_batch_of_one_mask(tiny, monkeypatch):
    import salient_background.models.networks.sam as sam_pkg
    from salient_background.models.scoring.expansion import score_expansion

    calls = []
    real = sam_pkg.prompts_from_mask
    monkeypatch.setattr(sam_pkg, "prompts_from_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    image, mask = object_on_background(64, 64)
    score_expansion(tiny, image[None].expand(4, -1, -1, -1), mask, points=3)
    assert len(calls) == 1
    score_expansion(tiny, image[None].expand(2, -1, -1, -1), mask[None].expand(2, -1, -1), points=3)
    assert len(calls) == 3  # two masks given: one prompt set each


def test_mask_choice_rule():
    one = PromptSet(points=np.array([[1, 1]], np.float32), labels=np.array([1]))
    many = PromptSet(points=np.array([[1, 1], [2, 2]], np.float32), labels=np.array([1, 1]))
    boxed = PromptSet(points=np.array([[1, 1]], np.float32), labels=np.array([1]), box=np.array([0, 0, 3, 3], np.float32))
    assert uses_multimask(one, "auto") and not uses_multimask(many, "auto") and not uses_multimask(boxed, "auto")
    assert uses_multimask(many, "best_score") and uses_multimask(many, "largest") and not uses_multimask(one, "single")
    with pytest.raises(ValueError):
        uses_multimask(one, "biggest")
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :1] = True  # 4 px
    masks[1, :3] = True  # 12 px
    masks[2, :2] = True  # 8 px
    scores = np.array([0.9, 0.2, 0.5])
    assert choose_output(masks, scores, "auto") == 0
    assert choose_output(masks, scores, "best_score") == 0
    assert choose_output(masks, scores, "largest") == 1
    assert choose_output(masks[:1], scores[:1], "largest") == 0


def test_session_outputs_follow_the_rule(tiny):
    image, mask = object_on_background(64, 96)
    session = SamImageSession(tiny, image)
    single = session.predict(prompts_from_mask(mask, 1, 0))
    several = session.predict(prompts_from_mask(mask, 4, 0))
    assert single.multimask and single.index in (1, 2, 3)
    assert not several.multimask and several.index == 0
    # the kept multimask output is the one with the highest predicted IoU: check against SAM's own three
    masks, scores, _ = session.predictor.predict(point_coords=prompts_from_mask(mask, 1, 0).points,
                                                 point_labels=np.array([1]), multimask_output=True)
    assert single.index - 1 == int(np.argmax(scores))
    assert torch.equal(single.mask, torch.from_numpy(masks[int(np.argmax(scores))]))
    assert single.mask.shape == (64, 96)


def test_refine_modes_combine_sam_with_the_input(tiny):
    image, _ = object_on_background(64, 96)
    soft = disk_mask(64, 96, 32, 48, 16) * 0.8 + 0.1 * disk_mask(64, 96, 32, 48, 22)
    prompt = prompts_from_mask(soft, 5, 7, negative=True)
    sam_mask = SamImageSession(tiny, image).predict(prompt).mask.float()
    replace = refine_masks(tiny, image[None], soft[None], mode="replace", points=5, seed=7, negative=True)[0]
    inter = refine_masks(tiny, image[None], soft[None], mode="intersect", points=5, seed=7, negative=True)[0]
    union = refine_masks(tiny, image[None], soft[None], mode="union", points=5, seed=7, negative=True)[0]
    assert torch.equal(replace, sam_mask)
    assert torch.equal(inter, torch.where(sam_mask > 0, soft, torch.zeros_like(soft)))
    assert torch.equal(union, torch.where(sam_mask > 0, torch.ones_like(soft), soft))
    with pytest.raises(ValueError):
        combine_masks(soft, sam_mask > 0, "xor")


def test_refine_leaves_an_empty_mask_alone_and_checks_sizes(tiny, caplog):
    image, mask = object_on_background(40, 40)
    masks = torch.stack([mask, torch.zeros(40, 40)])
    with caplog.at_level("WARNING", logger="salient_background"):
        out = refine_masks(tiny, image[None].expand(2, -1, -1, -1), masks, points=2)
    assert torch.equal(out[1], torch.zeros(40, 40)) and "empty" in caplog.text
    from salient_background.models.errors import InputError

    with pytest.raises(InputError, match="40x40"):
        refine_masks(tiny, image[None], torch.zeros(1, 20, 20), points=2)
