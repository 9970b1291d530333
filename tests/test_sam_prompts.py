"""Point sampling from a mask: inside, deterministic, spread, on rings and thin bars; negatives; box; distances."""
from __future__ import annotations


import numpy as np
import torch

from salient_background.models.networks.sam import (
    chamfer_distance,
    mask_box,
    prompts_from_mask,
    sample_negative_points,
    sample_positive_points,
)
from sb_testkit.images import disk_mask, rect_mask


def _inside(mask: torch.Tensor, pts: np.ndarray) -> bool:
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert np.all(pts == np.round(pts)), "points must be pixel indices"
    return bool((mask[ys, xs] >= 0.5).all())


def _min_pairwise(pts: np.ndarray) -> float:
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    d[np.eye(len(pts), dtype=bool)] = np.inf
    return float(d.min())


def ring_mask(h, w, cy, cx, r_in, r_out):
    return disk_mask(h, w, cy, cx, r_out) - disk_mask(h, w, cy, cx, r_in)


def test_chamfer_distance_bounds_exact_euclidean_distance():
    rng = np.random.default_rng(3)
    small = rng.random((6, 7)) > 0.35
    inside = np.kron(small, np.ones((6, 6), dtype=bool))  # blobby 36x42 shape touching the border
    h, w = inside.shape
    # exact distance by brute force to every background pixel, the outside of the image counting as background
    bg = [(y, x) for y in range(-1, h + 1) for x in range(-1, w + 1)
          if not (0 <= y < h and 0 <= x < w) or not inside[y, x]]
    bg = np.array(bg, dtype=np.float64)
    exact = np.zeros((h, w))
    for y, x in zip(*np.nonzero(inside)):
        exact[y, x] = np.sqrt(((bg - (y, x)) ** 2).sum(1)).min()
    got = chamfer_distance(inside)
    assert np.all(got[~inside] == 0)
    assert np.all(got >= exact - 1e-9)
    assert np.all(got <= exact * 1.0824 + 1e-9)  # 8-neighbour chamfer overestimates by at most 8.24 %
    # straight runs are exact: a 5-wide horizontal bar has distances 1,2,3,2,1 across it
    bar = np.zeros((9, 40), bool)
    bar[2:7, 5:35] = True
    assert chamfer_distance(bar)[2:7, 20].tolist() == [1, 2, 3, 2, 1]


def test_points_are_inside_deterministic_and_seed_dependent():
    mask = rect_mask(120, 200, 20, 30, 100, 170)
    a = sample_positive_points(mask, 8, seed=5)
    b = sample_positive_points(mask, 8, seed=5)
    c = sample_positive_points(mask, 8, seed=6)
    assert a.shape == (8, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert _inside(mask, a) and _inside(mask, c)


def test_points_spread_over_a_rectangle_and_keep_off_the_rim():
    mask = rect_mask(120, 200, 20, 30, 100, 170)  # 140 x 80
    pts = sample_positive_points(mask, 8, seed=0)
    # 8 clustered points would sit within a few pixels; spread ones are far apart and span the object
    assert _min_pairwise(pts) >= 20
    assert np.ptp(pts[:, 0]) >= 0.5 * 140 and np.ptp(pts[:, 1]) >= 0.4 * 80
    dist = chamfer_distance(mask.numpy() >= 0.5)
    assert dist[pts[:, 1].astype(int), pts[:, 0].astype(int)].min() >= 2


def test_points_stay_inside_a_ring_and_go_round_it():
    mask = ring_mask(160, 160, 80, 80, 40, 60)
    pts = sample_positive_points(mask, 8, seed=1)
    assert _inside(mask, pts)
    radii = np.hypot(pts[:, 0] - 80, pts[:, 1] - 80)
    assert radii.min() > 40 and radii.max() <= 60
    angles = np.degrees(np.arctan2(pts[:, 1] - 80, pts[:, 0] - 80)) % 360
    assert len({int(a // 90) for a in angles}) == 4  # every quadrant of the ring has a point


def test_points_on_a_thin_bar_follow_its_centre_line():
    mask = rect_mask(50, 300, 24, 20, 27, 280)  # 3 px tall, 260 px long
    pts = sample_positive_points(mask, 6, seed=0)
    assert _inside(mask, pts)
    assert set(pts[:, 1].tolist()) == {25.0}  # the middle row: interior distance 2 beats the rims' 1
    assert np.ptp(pts[:, 0]) >= 200
    one_px = rect_mask(40, 40, 0, 0, 0, 0)
    for k in range(40):
        one_px[k, k] = 1  # a diagonal line one pixel wide
    diag = sample_positive_points(one_px, 4, seed=2)
    assert _inside(one_px, diag) and _min_pairwise(diag) > 10


def test_specks_get_no_point_but_equal_parts_both_do():
    mask = disk_mask(100, 200, 50, 50, 30)
    mask[90, 190] = 1  # a one-pixel speck far away
    pts = sample_positive_points(mask, 8, seed=0)
    assert np.hypot(pts[:, 0] - 50, pts[:, 1] - 50).max() <= 30
    two = disk_mask(100, 200, 50, 50, 30) + disk_mask(100, 200, 50, 150, 30)
    pts = sample_positive_points(two, 4, seed=0)
    assert (pts[:, 0] < 100).any() and (pts[:, 0] > 100).any()


def test_fewer_pixels_than_points_and_empty_mask():
    tiny = rect_mask(10, 10, 4, 4, 6, 5)  # 2 pixels
    assert len(sample_positive_points(tiny, 8, seed=0)) == 2
    assert sample_positive_points(torch.zeros(10, 10), 8).shape == (0, 2)
    prompt = prompts_from_mask(torch.zeros(10, 10), 8, 0, negative=True, box=True)
    assert len(prompt.points) == 0 and prompt.box is None


def test_negative_points_lie_in_the_band_around_the_object():
    mask = disk_mask(200, 200, 100, 100, 40)
    rng = np.random.default_rng(0)
    neg = sample_negative_points(mask, 4, rng=rng)
    assert neg.shape == (4, 2)
    dist_to_object = np.hypot(neg[:, 0] - 100, neg[:, 1] - 100) - 40
    # band [max(4, 0.15 s), max(8, 0.5 s)] with s = sqrt(area / pi) ~ 40 -> [6, 20] (chamfer: up to 8 % more)
    assert dist_to_object.min() >= 6 * 0.92 - 1 and dist_to_object.max() <= 20 + 1
    prompt = prompts_from_mask(mask, 6, 3, negative=True)
    assert prompt.labels.tolist() == [1] * 6 + [0] * 3
    assert _inside(mask, prompt.positive) and not _inside(mask, prompt.negative[:1])
    assert np.array_equal(prompt.positive, prompts_from_mask(mask, 6, 3).points)  # negatives come after


def test_box_is_the_inclusive_pixel_bounds():
    mask = rect_mask(50, 80, 10, 20, 30, 61)  # rows 10..29, cols 20..60
    assert mask_box(mask).tolist() == [20, 10, 60, 29]
    assert prompts_from_mask(mask, 2, 0, box=True).box.tolist() == [20, 10, 60, 29]
    assert prompts_from_mask(mask, 2, 0).box is None
    assert mask_box(torch.zeros(5, 5)) is None


def test_soft_mask_is_binarised_at_one_half():
    soft = rect_mask(40, 40, 5, 5, 35, 35) * 0.49
    soft[10:20, 10:20] = 0.5
    pts = sample_positive_points(soft, 5, seed=0)
    assert ((pts >= 10) & (pts < 20)).all()
