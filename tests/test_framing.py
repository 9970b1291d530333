"""Framing for SD2 (letterbox as the reference, upscaling, crop around the object), restore, paste back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from salient_background.models.imaging import framing
from salient_background.models.imaging.compositing import paste_alpha, paste_object_back
from salient_background.models.errors import InputError
from salient_background.nodes.controlnet_nodes import FrameForInpainting, PasteObjectBack, RestoreFrame
from sb_testkit.images import object_on_background, rect_mask, textured_image


def reference_letterbox(img: Image.Image, size: int = 512) -> Image.Image:
    """What yahoo/photo-background-generation does: thumbnail (downscale only), then centre padding with black."""
    img = img.copy()
    img.thumbnail((size, size))
    dw, dh = size - img.size[0], size - img.size[1]
    return ImageOps.expand(img, (dw // 2, dh // 2, dw - dw // 2, dh - dh // 2))


@pytest.mark.parametrize("h,w", [(700, 900), (900, 700), (300, 200), (513, 1000), (1000, 511), (512, 512), (2000, 333), (37, 1201)])
def test_letterbox_matches_the_reference_exactly(h, w):
    rng = np.random.default_rng(h * w)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
    t = framing.fit_transform(h, w, 512)
    ours = framing.apply_pil(img, t)
    ref = reference_letterbox(img)
    assert ours.size == ref.size == (512, 512)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))
    # and the geometry is the centred padding of the reference
    assert (t.target_h, t.target_w) == (512, 512)
    assert t.pad_top == (512 - t.scaled_h) // 2 and t.pad_left == (512 - t.scaled_w) // 2
    assert max(t.scaled_h, t.scaled_w) == (512 if max(h, w) > 512 else max(h, w))


def test_small_photos_are_padded_by_default_and_enlarged_on_request():
    t = framing.fit_transform(100, 200, 512)
    assert (t.scaled_h, t.scaled_w, t.pad_top, t.pad_left) == (100, 200, 206, 156)
    up = framing.fit_transform(100, 200, 512, allow_upscale=True)
    assert (up.scaled_h, up.scaled_w, up.pad_top, up.pad_left) == (256, 512, 128, 0)


def test_letterbox_round_trip_is_exact_without_resizing():
    image = textured_image(100, 60, seed=3)[None]
    mask = rect_mask(100, 60, 10, 5, 70, 40)[None]
    t = framing.fit_transform(100, 60, 128)
    framed = framing.apply(image, t)
    assert framed.shape == (1, 128, 128, 3)
    top, left, bottom, right = t.content_box()
    assert torch.equal(framed[:, top:bottom, left:right], image)
    assert framed[:, :top].abs().sum() == 0 and framed[:, :, :left].abs().sum() == 0  # black padding
    assert torch.equal(framing.restore(framed, t), image)
    fm = framing.apply(mask, t, mode="bilinear")
    assert fm.shape == (1, 128, 128) and fm.sum() == mask.sum()
    assert torch.equal(framing.restore(fm, t, mode="bilinear"), mask)


def test_downscaled_round_trip_is_close_for_a_smooth_image():
    image = textured_image(600, 800, seed=1)[None]
    t = framing.fit_transform(600, 800, 512)
    assert (t.scaled_h, t.scaled_w) == (384, 512)
    back = framing.restore(framing.apply(image, t), t)
    assert back.shape == image.shape
    assert (back - image).abs().mean() < 0.01


def test_crop_around_object_contains_the_object_with_its_margin_and_restores_into_the_original():
    h, w = 400, 600
    mask = rect_mask(h, w, 150, 300, 200, 380)  # 50 x 80 object
    t = framing.crop_transform(mask, margin=0.25, target=256)
    # box grows by 0.25 * 80 = 20 px each side -> 90 x 120, then square 120 x 120 around the centre
    assert (t.crop_h, t.crop_w) == (120, 120)
    assert t.crop_top <= 150 - 20 and t.crop_top + t.crop_h >= 200 + 20
    assert t.crop_left <= 300 - 20 and t.crop_left + t.crop_w >= 380 + 20
    assert (t.scaled_h, t.scaled_w) == (256, 256)  # upscaled to fill the canvas
    image = textured_image(h, w, seed=2)[None]
    framed = framing.apply(image, t)
    fm = framing.apply(mask[None], t, mode="bilinear")
    box = framing.object_box(fm[0])
    assert box is not None and box[0] > 0 and box[1] > 0 and box[2] < 256 and box[3] < 256
    # restoring the framed image itself into the original changes only the crop box, and little there
    back = framing.restore(framed, t, original=image)
    region = framing.crop_region_mask(t).bool()
    assert torch.equal(back[0][~region], image[0][~region])
    assert (back[0][region] - image[0][region]).abs().mean() < 0.02


def test_crop_is_shifted_inside_the_photo_near_its_border():
    mask = rect_mask(300, 300, 0, 0, 40, 40)
    t = framing.crop_transform(mask, margin=0.5, target=512)
    assert t.crop_top == 0 and t.crop_left == 0 and t.crop_h == t.crop_w == 80
    empty = framing.crop_transform(torch.zeros(50, 70), target=64)
    assert empty == framing.fit_transform(50, 70, 64, allow_upscale=True)


def test_transform_serialises():
    t = framing.fit_transform(123, 456, 512, allow_upscale=True)
    assert framing.FrameTransform.from_dict(t.to_dict()) == t


def test_size_errors_name_the_sizes():
    t = framing.fit_transform(100, 100, 64)
    with pytest.raises(InputError, match="100x100"):
        framing.apply(torch.zeros(1, 90, 100, 3), t)
    with pytest.raises(InputError, match="64x64"):
        framing.restore(torch.zeros(1, 60, 64, 3), t)


def test_frame_and_restore_nodes_on_a_batch():
    img1, m1 = object_on_background(120, 200, seed=1)
    img2, m2 = object_on_background(120, 200, seed=2)
    m2 = torch.roll(m2, shifts=40, dims=1)
    images, masks = torch.stack([img1, img2]), torch.stack([m1, m2])
    framed, fmask, record = FrameForInpainting().frame(images, "letterbox", 128, False, 0.25, object_mask=masks)
    assert framed.shape == (2, 128, 128, 3) and fmask.shape == (2, 128, 128) and len(record.transforms) == 1
    back, region = RestoreFrame().restore(framed, record, original_image=images)
    assert back.shape == images.shape and region.shape == (2, 120, 200)
    assert (back - images).abs().mean() < 0.02
    # crop mode: one transform per item (the objects sit in different places)
    framed, fmask, record = FrameForInpainting().frame(images, "crop around object", 96, True, 0.1, object_mask=masks)
    assert len(record.transforms) == 2 and record.transforms[0] != record.transforms[1]
    for i in range(2):
        assert fmask[i].sum() > 0.2 * 96 * 96  # the object fills the crop
    back, bmask = RestoreFrame().restore(framed, record, original_image=images, mask=fmask)
    assert back.shape == images.shape
    assert ((bmask > 0.5) == (masks > 0.5)).float().mean() > 0.99
    with pytest.raises(InputError, match="object_mask"):
        FrameForInpainting().frame(images, "crop around object", 96, True, 0.1)


def test_paste_back_keeps_the_object_and_the_new_background_with_a_soft_seam():
    h, w = 64, 64
    generated = torch.zeros(1, h, w, 3)
    original = torch.ones(1, h, w, 3)
    mask = rect_mask(h, w, 16, 16, 48, 48)[None]
    # no erosion, no feather: exactly the binary composite
    hard = paste_object_back(generated, original, mask, erode=0, feather=0)
    assert torch.equal(hard[0, ..., 0], mask[0])
    out = PasteObjectBack().paste(generated, original, mask, erode=4, feather=4)[0]
    alpha = out[0, ..., 0]
    assert torch.all(alpha[mask[0] == 0] == 0)  # the seam stays inside the object: no old background comes back
    assert torch.allclose(alpha[24:40, 24:40], torch.ones(16, 16), atol=1e-6)  # the object's core is the original
    row = alpha[32, 16:33]
    assert torch.all(row[1:] >= row[:-1] - 1e-6) and 0 < row[4] < 1  # a monotone, soft ramp across the seam
    a = paste_alpha(mask, erode=4, feather=0)
    assert a.sum() == (32 - 8) ** 2  # erosion by a disk of 4 shrinks the square by 4 on each side


def test_paste_back_refuses_mismatched_sizes():
    with pytest.raises(InputError, match="Restore Frame"):
        paste_object_back(torch.zeros(1, 64, 64, 3), torch.zeros(1, 32, 32, 3), torch.zeros(1, 64, 64))


def test_small_object_warning_names_the_object_size_after_framing():
    # a 3000x200 photo whose object fills it: fitted into 512 it is a 512x34 strip
    t = framing.fit_transform(200, 3000, 512)
    assert (t.scaled_h, t.scaled_w) == (34, 512)
    framed = framing.apply(torch.ones(1, 200, 3000), t, mode="bilinear")[0]
    message = framing.small_object_warning(framed)
    assert message is not None and "512x34" in message and "64" in message
    assert framing.small_object_warning(rect_mask(512, 512, 100, 100, 164, 300)) is None  # 64 px: fine
    assert framing.small_object_warning(rect_mask(512, 512, 100, 100, 163, 300)) is not None
    assert framing.small_object_warning(torch.zeros(64, 64)) is None  # no object: another warning's job


def test_frame_node_warns_about_a_tiny_object(caplog):
    image = torch.rand(1, 20, 300, 3)
    with caplog.at_level("WARNING", logger="salient_background"):
        FrameForInpainting().frame(image, "letterbox", 128, False, 0.25, object_mask=torch.ones(1, 20, 300))
    assert any("128x9" in r.getMessage() for r in caplog.records), caplog.text


def test_choose_transform_is_the_one_framing_rule():
    mask = rect_mask(400, 600, 150, 300, 200, 380)
    assert framing.choose_transform(400, 600, framing.FIT, 256) == framing.fit_transform(400, 600, 256)
    assert framing.choose_transform(400, 600, framing.CROP, 256, allow_upscale=True, margin=0.25, object_mask=mask) == \
        framing.crop_transform(mask, 0.25, 256, allow_upscale=True)
    with pytest.raises(InputError, match="mask"):
        framing.choose_transform(400, 600, framing.CROP, 256)
    with pytest.raises(InputError, match="unknown framing mode"):
        framing.choose_transform(400, 600, "stretch", 256)


def test_crop_to_multiple_centres_the_crop():
    images = torch.arange(1 * 21 * 19 * 3, dtype=torch.float32).reshape(1, 21, 19, 3)
    masks = torch.ones(1, 21, 19)
    out_images, out_masks = framing.crop_to_multiple(images, masks, 8)
    assert out_images.shape == (1, 16, 16, 3) and out_masks.shape == (1, 16, 16)
    assert torch.equal(out_images, images[:, 2:18, 1:17])
    with pytest.raises(InputError, match="at least 8"):
        framing.crop_to_multiple(torch.zeros(1, 7, 30, 3), torch.zeros(1, 7, 30), 8)
