"""Layout coercion, mask alignment and the PIL round trips on known values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background.models.imaging import image_ops
from salient_background.models.errors import InputError


def test_rgba_drops_alpha_and_greyscale_repeats():
    rgba = torch.rand(2, 5, 7, 4)
    assert torch.equal(image_ops.as_rgb_images(rgba), rgba[..., :3])
    grey = torch.rand(1, 5, 7, 1)
    rgb = image_ops.as_rgb_images(grey)
    assert rgb.shape == (1, 5, 7, 3) and torch.equal(rgb[..., 0], rgb[..., 2]) and torch.equal(rgb[..., 1], grey[..., 0])
    assert image_ops.as_rgb_images(torch.rand(5, 7, 3)).shape == (1, 5, 7, 3)


def test_nan_and_out_of_range_values_are_cleaned(caplog):
    image = torch.full((1, 2, 2, 3), 0.5)
    image[0, 0, 0, 0] = float("nan")
    image[0, 1, 1, 1] = 3.0
    cleaned = image_ops.as_rgb_images(image)
    assert cleaned[0, 0, 0, 0] == 0 and cleaned[0, 1, 1, 1] == 1 and cleaned[0, 1, 0, 2] == 0.5
    assert "NaN" in caplog.text


@pytest.mark.parametrize("bad", [torch.rand(5, 7), torch.rand(1, 5, 7, 5), torch.rand(1, 0, 7, 3)])
def test_unusable_layouts_are_refused_with_the_shape(bad):
    with pytest.raises(InputError, match="shape|channels|empty"):
        image_ops.as_rgb_images(bad)


def test_one_mask_is_broadcast_and_mismatches_name_both_sizes():
    images = torch.rand(3, 4, 6, 3)
    mask = torch.rand(1, 4, 6)
    out = image_ops.match_mask_to_images(mask, images)
    assert out.shape == (3, 4, 6) and torch.equal(out[2], mask[0])
    with pytest.raises(InputError, match="5x4.*6x4|is 5x4 but the image is 6x4"):
        image_ops.match_mask_to_images(torch.rand(1, 4, 5), images)
    with pytest.raises(InputError, match="batch of 2 does not match the image batch of 3"):
        image_ops.match_mask_to_images(torch.rand(2, 4, 6), images)


def test_pil_round_trip_is_exact_for_8_bit_images():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    image, alpha = image_ops.pil_to_image(Image.fromarray(pixels))
    assert alpha is None
    assert np.array_equal(image_ops.image_to_uint8(image[0]), pixels)


def test_rgba_file_alpha_is_returned_separately_and_cutout_uses_the_mask():
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = 255
    pixels[0, 0, 3] = 0
    image, alpha = image_ops.pil_to_image(Image.fromarray(pixels, mode="RGBA"))
    assert image.shape == (1, 4, 4, 3) and alpha[0, 0, 0] == 0 and alpha[0, 1, 1] == 1
    mask = torch.zeros(4, 4)
    mask[1:3, 1:3] = 1
    cut = np.asarray(image_ops.cutout_rgba(image[0], mask))
    assert cut.shape == (4, 4, 4) and cut[1, 1, 3] == 255 and cut[0, 0, 3] == 0 and cut[1, 1, 0] == 200


def test_composite_and_overlay_values():
    images = torch.ones(1, 2, 2, 3)
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    comp = image_ops.composite_on_colour(images, mask, colour=(0.5, 0.5, 0.5))
    assert comp[0, 0, 0].tolist() == [1, 1, 1] and comp[0, 0, 1].tolist() == [0.5, 0.5, 0.5]
    assert comp[0, 1, 0, 0].item() == pytest.approx(0.75)
    over = image_ops.overlay_mask(torch.zeros(1, 2, 2, 3), mask, colour=(1, 0, 0), opacity=0.5)
    assert over[0, 0, 0].tolist() == [0.5, 0, 0] and over[0, 0, 1].tolist() == [0, 0, 0]
