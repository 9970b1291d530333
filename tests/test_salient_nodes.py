"""The salient nodes and the `mask` command on a full-size random InSPyReNet saved in the official layout.

Runs without ComfyUI: the nodes fall back to plain devices and no progress bar.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background.models.errors import CheckpointError
from salient_background.nodes.salient_nodes import LoadSalientModel, SalientMask
from sb_testkit.inspyrenet import synthetic_photo


@pytest.fixture(scope="module")
def salient_model(inspyrenet_fast_checkpoint):
    (model,) = LoadSalientModel().load(inspyrenet_fast_checkpoint, mode="fast", precision="fp32")
    return model


def photo_batch(*seeds, size=(96, 128)) -> torch.Tensor:
    return torch.stack([torch.from_numpy(synthetic_photo(size[1], size[0], seed=s)).float() / 255 for s in seeds])


def test_loader_caches_and_reloads_a_replaced_file(inspyrenet_fast_checkpoint, salient_model, tmp_path):
    (again,) = LoadSalientModel().load(inspyrenet_fast_checkpoint, mode="fast", precision="fp32")
    assert again is salient_model
    copy = tmp_path / "copy.pth"
    copy.write_bytes(open(inspyrenet_fast_checkpoint, "rb").read())
    (other,) = LoadSalientModel().load(str(copy), mode="fast", precision="fp32")
    assert other is not salient_model


def test_loader_validation_reports_a_missing_file_with_the_download_command(inspyrenet_fast_checkpoint, monkeypatch):
    """ComfyUI shows a VALIDATE_INPUTS string instead of its bare 'Value not in list'."""
    monkeypatch.delenv("SALIENT_BG_AUTO_DOWNLOAD", raising=False)
    assert LoadSalientModel.VALIDATE_INPUTS(inspyrenet_fast_checkpoint) is True
    reason = LoadSalientModel.VALIDATE_INPUTS("ckpt_base.pth")
    assert isinstance(reason, str) and "ckpt_base.pth" in reason
    assert "python -m salient_background download inspyrenet-base" in reason
    monkeypatch.setenv("SALIENT_BG_AUTO_DOWNLOAD", "1")  # the loader will fetch it: validation lets it through
    assert LoadSalientModel.VALIDATE_INPUTS("ckpt_base.pth") is True


def test_loader_names_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*salient.*ckpt_base.pth"):
        LoadSalientModel().load("nothing_here.pth", mode="base")
    bad = tmp_path / "notes.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        LoadSalientModel().load(str(bad), mode="base")


@pytest.fixture(scope="module")
def batch_result(salient_model):
    images = photo_batch(1, 2, 3)
    return images, SalientMask().segment(salient_model, images, resize="auto", mask_type="soft", batch_size=2)


def test_mask_outputs_are_consistent_and_batched(salient_model, batch_result):
    images, (object_mask, cutout, background_mask, preview) = batch_result
    assert object_mask.shape == (3, 96, 128) and cutout.shape == (3, 96, 128, 3) and preview.shape == (3, 96, 128, 3)
    assert object_mask.min() >= 0 and object_mask.max() <= 1
    assert torch.allclose(background_mask, 1 - object_mask)
    for i in range(3):  # per-image normalisation: every map spans (nearly, after resizing back) 0..1
        assert object_mask[i].max().item() > 0.99 and object_mask[i].min().item() < 0.01
    # cut-out = image where the object is, neutral grey where it is not
    alpha = object_mask[..., None]
    assert torch.allclose(cutout, images * alpha + 0.5 * (1 - alpha), atol=1e-6)
    # the same image alone gives the same map as inside the batch (the reference normalises over the batch)
    (alone, *_) = SalientMask().segment(salient_model, images[1:2], resize="auto", mask_type="binary")
    assert torch.equal(alone[0], (object_mask[1] >= 0.5).float())


def test_rgba_greyscale_and_nan_inputs_do_not_crash(salient_model, batch_result):
    images, (object_mask, *_) = batch_result
    rgba = torch.cat([images[0:1], torch.rand(1, 96, 128, 1)], dim=-1)
    (from_rgba, *_) = SalientMask().segment(salient_model, rgba)
    assert torch.allclose(from_rgba[0], object_mask[0], atol=1e-5)  # alpha ignored, like PIL's convert('RGB')
    grey = images[1:2].mean(dim=-1, keepdim=True)
    broken = images[2:3].clone()
    broken[0, :10, :10] = float("nan")
    (from_grey, *_) = SalientMask().segment(salient_model, grey)
    (from_nan, *_) = SalientMask().segment(salient_model, broken)
    assert from_grey.shape == (1, 96, 128) and torch.isfinite(from_grey).all() and torch.isfinite(from_nan).all()


def test_an_image_without_salient_object_gets_an_empty_mask_and_the_rest_of_the_batch_is_kept(salient_model, caplog):
    images = photo_batch(5, 6)
    first = salient_model.segmenter.predict(images, threshold_empty=0.0)
    assert first.empty == [False, False]
    weaker = int(first.raw_max[1] < first.raw_max[0])
    threshold = float(first.raw_max.min()) + 1e-4  # only the weaker image falls under it
    second = salient_model.segmenter.predict(images, threshold_empty=threshold)
    assert second.empty[weaker] and not second.empty[1 - weaker]
    assert second.maps[weaker].abs().sum() == 0
    assert torch.allclose(second.maps[1 - weaker], first.maps[1 - weaker])
    assert "no salient object" in caplog.text


def test_mask_command_writes_mask_and_cutout(inspyrenet_fast_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    Image.fromarray(synthetic_photo(120, 80, seed=7)).save(photos / "a.png")
    Image.fromarray(synthetic_photo(64, 64, seed=8)).convert("L").save(photos / "nested" / "b.jpg")
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "salient_background", "mask", str(photos), "--checkpoint", inspyrenet_fast_checkpoint,
         "--mode", "fast", "--output-dir", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # one unreadable file: reported, the others written
    assert "broken.png" in result.stderr
    mask = np.asarray(Image.open(out / "a_mask.png"))
    cutout = np.asarray(Image.open(out / "a_cutout.png"))
    assert mask.shape == (80, 120) and cutout.shape == (80, 120, 4)
    assert np.array_equal(cutout[..., 3], mask)  # the cut-out's alpha is the object mask
    assert np.array_equal(cutout[..., :3], synthetic_photo(120, 80, seed=7))
    assert mask.max() == 255 and mask.min() == 0
    # a photo in a sub-folder is named after its path under the folder given (models/runs/item_ids.py)
    assert os.path.exists(out / "nested__b_mask.png") and os.path.exists(out / "nested__b_cutout.png")


def test_mask_command_explains_a_missing_checkpoint(tmp_path):
    Image.fromarray(synthetic_photo(32, 32)).save(tmp_path / "a.png")
    result = subprocess.run([sys.executable, "-m", "salient_background", "mask", str(tmp_path / "a.png"),
                             "--checkpoint", str(tmp_path / "missing.pth")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing.pth" in result.stderr and "Traceback" not in result.stderr
