"""The object-expansion metric on drawn shapes with known areas, its undefined cases, size policy, the signed
salient variant, and the SAM pipeline checked against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from salient_background.models.scoring import expansion as ex
from salient_background.models.errors import InputError
from sb_testkit.images import disk_mask, object_on_background, rect_mask
from sb_testkit.sam import cached_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_identical_masks_have_no_expansion():
    m = rect_mask(100, 200, 10, 20, 60, 120)  # 50 x 100 = 5000 px
    s = ex.expansion_from_masks(m, m)
    assert (s.object_px, s.sam_px, s.expansion_px, s.lost_px, s.iou) == (5000, 5000, 0.0, 0.0, 1.0)
    assert s.expansion_relative == 0.0 and s.expansion_image_fraction == 0.0


def test_grown_rectangle():
    mi = rect_mask(100, 200, 10, 20, 60, 120)  # 5000 px
    mo = rect_mask(100, 200, 5, 15, 65, 125)  # 60 x 110 = 6600 px, contains mi
    s = ex.expansion_from_masks(mi, mo)
    assert s.expansion_px == 1600.0
    assert s.expansion_image_fraction == pytest.approx(1600 / 20000)
    assert s.expansion_relative == pytest.approx(1600 / 5000)
    assert s.lost_px == 0 and s.iou == pytest.approx(5000 / 6600)


def test_grown_disk_against_pixel_count():
    mi = disk_mask(120, 120, 60, 60, 20)
    mo = disk_mask(120, 120, 60, 60, 30)
    # independent count of lattice points with 20^2 < r^2 <= 30^2
    yy, xx = np.mgrid[0:120, 0:120]
    r2 = (yy - 60) ** 2 + (xx - 60) ** 2
    ring = int(((r2 > 400) & (r2 <= 900)).sum())
    s = ex.expansion_from_masks(mi, mo)
    assert s.expansion_px == ring and s.object_px == int((r2 <= 400).sum())
    assert ring == pytest.approx(math.pi * (900 - 400), rel=0.02)


def test_shrunk_object_does_not_count_as_expansion():
    mi = rect_mask(100, 100, 10, 10, 90, 90)  # 6400
    mo = rect_mask(100, 100, 20, 20, 80, 80)  # 3600
    s = ex.expansion_from_masks(mi, mo)
    assert s.expansion_px == 0.0 and s.lost_px == 2800.0 and s.iou == pytest.approx(3600 / 6400)


def test_shifted_object_expands_by_the_uncovered_strip():
    mi = rect_mask(100, 100, 20, 20, 60, 50)  # 40 rows x 30 cols
    mo = rect_mask(100, 100, 20, 27, 60, 57)  # shifted right by 7
    s = ex.expansion_from_masks(mi, mo)
    assert s.expansion_px == 7 * 40 and s.lost_px == 7 * 40
    assert s.iou == pytest.approx((23 * 40) / (37 * 40))


def test_soft_masks_are_binarised_at_one_half():
    mi = rect_mask(10, 10, 0, 0, 10, 5) * 0.5  # exactly 0.5 counts as object
    mo = rect_mask(10, 10, 0, 0, 10, 8) * 0.49 + rect_mask(10, 10, 0, 0, 10, 6) * 0.2  # 0.69 on cols 0..5
    s = ex.expansion_from_masks(mi, mo)
    assert s.object_px == 50 and s.sam_px == 60 and s.expansion_px == 10


def test_empty_object_mask_is_nan_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="salient_background"):
        s = ex.expansion_from_masks(torch.zeros(20, 20), rect_mask(20, 20, 0, 0, 5, 5))
    assert math.isnan(s.expansion_px) and math.isnan(s.expansion_relative) and math.isnan(s.expansion_image_fraction)
    assert s.object_px == 0 and s.sam_px == 25
    assert "empty" in caplog.text
    assert "undefined" in ex.summary_text([s])


def test_size_policy_resizes_same_aspect_with_warning_and_refuses_other_framings(caplog):
    mask = rect_mask(50, 100, 10, 20, 40, 60)  # 100x50 image
    with caplog.at_level("WARNING", logger="salient_background"):
        up = ex.fit_mask_to_image(mask, 100, 200)
    assert "resized" in caplog.text
    assert up.dtype == torch.bool and up.shape == (100, 200)
    assert int(up.sum()) == 4 * int(mask.sum())  # an axis-aligned rectangle doubles exactly
    assert torch.equal(up, rect_mask(100, 200, 20, 40, 80, 120).bool())
    assert torch.equal(ex.fit_mask_to_image(mask, 50, 100), mask.bool())
    with pytest.raises(InputError, match=r"100x50.*200x200|aspect"):
        ex.fit_mask_to_image(mask, 200, 200)  # a letterboxed square generation: refused
    with pytest.raises(InputError):
        ex.expansion_from_masks(mask, torch.zeros(10, 10))


def test_signed_salient_change_follows_the_notebook():
    mi = rect_mask(20, 50, 0, 0, 10, 10)  # 100 of 1000 px
    mo = rect_mask(20, 50, 0, 0, 10, 15)  # 150 of 1000 px
    assert ex.signed_salient_change(mi, mo[None]) == pytest.approx([0.05])
    assert ex.signed_salient_change(mo, mi[None]) == pytest.approx([-0.05])
    # the notebook's uint8 rule: a map value v is object when int(v * 255) > 127
    edge = torch.tensor([[128 / 255, 127.99 / 255, 0.5, 1.0]])
    assert ex.notebook_binarise(edge).tolist() == [[True, False, False, True]]
    # one mask for 3 generated maps; an empty mask gives NaN
    values = ex.signed_salient_change(mi, torch.stack([mi, mo, torch.zeros(20, 50)]))
    assert values == pytest.approx([0.0, 0.05, -0.1])
    assert math.isnan(ex.signed_salient_change(torch.zeros(20, 50), mo[None])[0])


def test_batch_pairing():
    assert ex._batch_pairs(torch.zeros(1, 4, 4), 3) == [0, 0, 0]
    assert ex._batch_pairs(torch.zeros(3, 4, 4), 3) == [0, 1, 2]
    with pytest.raises(InputError, match="batch of 2"):
        ex._batch_pairs(torch.zeros(2, 4, 4), 3)


def test_overlay_colours_each_region():
    image = torch.full((1, 10, 10, 3), 0.4)
    mi = rect_mask(10, 10, 0, 0, 10, 6).bool()[None]  # cols 0..5
    mo = rect_mask(10, 10, 0, 3, 10, 10).bool()[None]  # cols 3..9
    out = ex.overlay(image, mi, mo)
    w = 0.55
    base = 0.4 * 0.75
    for col, colour in ((1, ex.LOST_COLOUR), (4, ex.KEPT_COLOUR), (8, ex.EXPANSION_COLOUR)):
        expected = [base * (1 - w) + c * w for c in colour]
        assert out[0, 5, col].tolist() == pytest.approx(expected, abs=1e-6)
    pts = [np.array([[2, 2]], np.float32)]
    marked = ex.overlay(image, mi, mo, pts)
    assert marked[0, 2, 2].tolist() == pytest.approx(list(ex.POINT_COLOUR))


def test_distribution_summary():
    d = ex.describe_distribution([0.0, 0.1, 0.2, 0.3, float("nan")], threshold=0.15)
    assert d["count"] == 4 and d["undefined"] == 1
    assert d["mean"] == pytest.approx(0.15) and d["median"] == pytest.approx(0.15)
    assert d["share_above_threshold"] == 0.5
    assert d["percentiles"]["25"] == pytest.approx(np.percentile([0, 0.1, 0.2, 0.3], 25))
    assert ex.describe_distribution([float("nan")])["mean"] is None


def test_score_expansion_matches_an_independent_count_on_sam_masks():
    from salient_background.models.networks.sam import load_sam

    model = load_sam(cached_checkpoint("tiny")).model
    image, mask = object_on_background(48, 64)
    images = torch.stack([image, image.flip(1), image * 0.5])
    run = ex.score_expansion(model, images, mask, points=4, seed=3)
    assert run.sam_masks.shape == (3, 48, 64) and run.object_masks.shape == (3, 48, 64)
    mi = mask.numpy() >= 0.5
    for k, s in enumerate(run.scores):
        mo = run.sam_masks[k].numpy()
        assert s.expansion_px == float(np.logical_and(mo, ~mi).sum())
        assert s.expansion_relative == pytest.approx(np.logical_and(mo, ~mi).sum() / mi.sum())
        assert s.lost_px == float(np.logical_and(mi, ~mo).sum())
    assert all(len(p) == 4 for p in run.points)
    # an empty mask in a batch: NaN for that image only
    run = ex.score_expansion(model, images[:2], torch.stack([mask, torch.zeros_like(mask)]), points=2)
    assert not math.isnan(run.scores[0].expansion_px) and math.isnan(run.scores[1].expansion_px)
    with pytest.raises(ValueError):
        ex.score_expansion(model, images[:1], mask, points=0)
