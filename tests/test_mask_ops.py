"""Mask operations on shapes whose results are known by hand or by an independent computation."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from salient_background.models.imaging import mask_ops
from sb_testkit.images import disk_mask, rect_mask


def bfs_components(binary: np.ndarray, connectivity: int) -> list[int]:
    """Independent reference: sorted component areas by breadth-first search."""
    h, w = binary.shape
    seen = np.zeros_like(binary, dtype=bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    areas = []
    for y in range(h):
        for x in range(w):
            if binary[y, x] and not seen[y, x]:
                seen[y, x] = True
                queue, count = deque([(y, x)]), 0
                while queue:
                    cy, cx = queue.popleft()
                    count += 1
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                areas.append(count)
    return sorted(areas)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", range(6))
def test_labels_match_breadth_first_search(seed, connectivity):
    rng = np.random.default_rng(seed)
    binary = rng.random((37, 53)) < rng.uniform(0.3, 0.6)
    labels, areas = mask_ops.label_components(binary, connectivity)
    assert sorted(areas[1:].tolist()) == bfs_components(binary, connectivity)
    assert ((labels > 0) == binary).all()
    for k in range(1, areas.size):  # each label's area is its pixel count
        assert (labels == k).sum() == areas[k]


def test_diagonal_touch_is_one_component_only_with_8_connectivity():
    binary = np.array([[1, 0], [0, 1]], dtype=bool)
    assert mask_ops.label_components(binary, 8)[1][1:].tolist() == [2]
    assert sorted(mask_ops.label_components(binary, 4)[1][1:].tolist()) == [1, 1]


def test_empty_mask_has_no_components():
    labels, areas = mask_ops.label_components(np.zeros((5, 5), bool))
    assert labels.max() == 0 and areas.tolist() == [0]


def test_dilate_disk_matches_distance_rule():
    mask = torch.zeros(1, 41, 41)
    mask[0, 20, 20] = 1.0
    grown = mask_ops.dilate(mask, 7)
    assert torch.equal(grown[0], disk_mask(41, 41, 20, 20, 7))
    assert grown.sum().item() == disk_mask(41, 41, 20, 20, 7).sum().item()


def test_grow_then_shrink_restores_a_rectangle_and_areas_are_exact():
    mask = rect_mask(60, 80, 20, 30, 40, 50)[None]  # 20x20 = 400
    assert mask_ops.area(mask).item() == 400
    grown = mask_ops.grow(mask, 3)
    # a 20x20 square grown by a disk of radius 3 = square + 4 side bands of 20x3 + 4 quarter-disk corners
    corner = sum(1 for dy in range(1, 4) for dx in range(1, 4) if dy * dy + dx * dx <= 9)
    assert mask_ops.area(grown).item() == 400 + 4 * 20 * 3 + 4 * corner
    assert torch.equal(mask_ops.grow(grown, -3), mask)
    assert mask_ops.area(mask_ops.grow(mask, -5)).item() == 10 * 10


def test_shrink_does_not_eat_from_the_image_border():
    mask = torch.ones(1, 10, 10)
    assert torch.equal(mask_ops.grow(mask, -3), mask)


def test_feather_softens_edges_but_keeps_the_centre_and_far_background():
    mask = rect_mask(64, 64, 16, 16, 48, 48)[None]
    soft = mask_ops.feather(mask, 6)
    assert soft[0, 32, 32].item() == pytest.approx(1.0, abs=1e-4)
    assert soft[0, 2, 2].item() == pytest.approx(0.0, abs=1e-4)
    edge = soft[0, 32, 16].item()
    assert 0.3 < edge < 0.7
    assert (soft >= 0).all() and (soft <= 1).all()


def test_fill_holes_fills_enclosed_regions_only():
    ring = disk_mask(50, 50, 25, 25, 15) - disk_mask(50, 50, 25, 25, 8)
    open_c = ring.clone()
    open_c[25:, 24:27] = 0  # cut the ring: the hole now reaches the border... through the cut
    filled = mask_ops.fill_holes(ring[None])[0]
    assert torch.equal(filled, disk_mask(50, 50, 25, 25, 15))
    assert torch.equal(mask_ops.fill_holes(open_c[None])[0], open_c)


def test_keep_largest_components_keeps_the_biggest_ones():
    mask = rect_mask(40, 40, 0, 0, 10, 10) + rect_mask(40, 40, 20, 20, 35, 35) + rect_mask(40, 40, 0, 30, 3, 33)
    kept = mask_ops.keep_largest_components(mask[None], 1)[0]
    assert torch.equal(kept, rect_mask(40, 40, 20, 20, 35, 35))
    kept2 = mask_ops.keep_largest_components(mask[None], 2)[0]
    assert mask_ops.area(kept2[None]).item() == 225 + 100


def test_threshold_and_invert():
    soft = torch.tensor([[[0.2, 0.5, 0.9]]])
    assert mask_ops.threshold(soft, 0.5).tolist() == [[[0.0, 1.0, 1.0]]]
    assert torch.allclose(mask_ops.invert(soft), torch.tensor([[[0.8, 0.5, 0.1]]]))
