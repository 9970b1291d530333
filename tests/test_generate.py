"""``python -m salient_background generate`` on a tiny folder with the tiny SI2 + ControlNet models."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sb_testkit.diffusers_models import tiny_sd  # noqa: F401  (session fixture)

from salient_background import cli


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _photo_folder(root):
    """photos/square.png (64x64) and photos/wide.png (96x48) with masks/<name>_mask.png (white rectangle)."""
    rng = np.random.default_rng(0)
    photos, masks = root / "photos", root / "masks"
    photos.mkdir()
    masks.mkdir()
    expected = {}
    for name, (h, w), box in [("square", (64, 64), (16, 40, 24, 48)), ("wide", (48, 96), (8, 40, 32, 64))]:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{name}.png")
        m = np.zeros((h, w), np.uint8)
        m[box[0]:box[1], box[2]:box[3]] = 255
        Image.fromarray(m).save(masks / f"{name}_mask.png")
        expected[name] = m
    return photos, masks, expected


def _generate(*args) -> int:
    return cli.main(["generate", *map(str, args), "--size", "64", "--steps", "2", "--no-progress", "--device", "cpu"])


def test_generate_folder_writes_images_masks_and_an_evaluator_manifest(tiny_sd, tmp_path, capsys):
    from salient_background.commands.evaluate import read_manifest

    photos, masks, expected = _photo_folder(tmp_path)
    out = tmp_path / "out"
    assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a photo of a swan",
                     "--num-images", "2", "--seed", "5", "--batch-size", "2", "--restore", "--output-dir", out) == 0

    for name in ("square", "wide"):
        for seed in (5, 6):
            picture = Image.open(out / "generated" / f"{name}_s{seed}.png")
            assert picture.size == (64, 64) and picture.mode == "RGB"
        assert Image.open(out / "inputs" / f"{name}.png").size == (64, 64)
    # the 64x64 photo is not reframed: its mask is written unchanged
    assert np.array_equal(np.asarray(Image.open(out / "masks" / "square.png")), expected["square"])
    # the 96x48 photo is letterboxed to 64x32, centred: rows 0..15 and 48..63 are padding (not object)
    wide_mask = np.asarray(Image.open(out / "masks" / "wide.png"))
    assert wide_mask[:16].max() == 0 and wide_mask[48:].max() == 0
    # the box rows 8..39 x cols 32..63 scaled by 2/3 and shifted down 16: about rows 21..43 x cols 21..43
    assert wide_mask[23:42, 23:42].min() > 127
    assert wide_mask[16:20].max() < 128 and wide_mask[16:48, :20].max() < 128 and wide_mask[16:48, 45:].max() < 128
    assert Image.open(out / "restored" / "wide_s5.png").size == (96, 48)
    assert np.asarray(Image.open(out / "inputs" / "wide.png"))[:16].max() == 0  # black letterbox, as the reference

    rows = read_manifest(str(out / "manifest.csv"))  # the expansion evaluator's own reader
    assert sorted((os.path.basename(r["mask"]), os.path.basename(r["generated"])) for r in rows) == [
        ("square.png", "square_s5.png"), ("square.png", "square_s6.png"), ("wide.png", "wide_s5.png"), ("wide.png", "wide_s6.png")]
    assert all(os.path.isfile(r["mask"]) and os.path.isfile(r["generated"]) and os.path.isfile(r["original"]) for r in rows)
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["settings"]["controlnet_scale"] == 1.0 and meta["settings"]["steps"] == 2
    assert meta["rows"][1]["frame"]["scaled_h"] == 32

    # seeds: the second image of a photo is the first of a run started at its seed
    again = tmp_path / "again"
    assert _generate(photos / "square.png", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks,
                     "--prompt", "a photo of a swan", "--seed", "6", "--output-dir", again) == 0
    assert np.array_equal(np.asarray(Image.open(again / "generated" / "square_s6.png")),
                          np.asarray(Image.open(out / "generated" / "square_s6.png")))

    # re-running resumes: nothing left to do
    capsys.readouterr()
    assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a photo of a swan",
                     "--num-images", "2", "--seed", "5", "--output-dir", out) == 0
    assert "nothing to do" in capsys.readouterr().out

    # scale 0 = the SI2 baseline: loads no ControlNet (an SI2 folder alone suffices) and gives another picture
    base = tmp_path / "baseline"
    assert _generate(photos / "square.png", "--si2", tiny_sd.si2_dir, "--masks", masks, "--prompt", "a photo of a swan",
                     "--seed", "5", "--controlnet-scale", "0", "--output-dir", base) == 0
    a = np.asarray(Image.open(base / "generated" / "square_s5.png")).astype(int)
    b = np.asarray(Image.open(out / "generated" / "square_s5.png")).astype(int)
    assert np.abs(a - b).max() > 10


def test_generate_from_manifest_with_salient_masks(tiny_sd, tmp_path, monkeypatch):
    """Manifest input (per-row prompts and seeds); the mask comes from the salient model run on the framed photo."""
    import salient_background.models.salient as salient

    photos, _, _ = _photo_folder(tmp_path)
    seen = []

    class StubSegmenter:  # stands in for InSPyReNet: returns a known map, records what it was shown
        def predict(self, images, **kw):
            seen.append(tuple(images.shape))
            maps = torch.zeros(images.shape[:3])
            maps[:, 20:44, 20:44] = 0.8
            return salient.SalientPrediction(maps=maps, raw_max=torch.ones(images.shape[0]), empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: StubSegmenter())
    (tmp_path / "ckpt_base.pth").write_bytes(b"")  # named files must exist (checked before any model loads)
    manifest = tmp_path / "jobs.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "prompt", "seed", "id"])
        w.writerow(["photos/wide.png", "a kitchen", "3", "first"])
        w.writerow(["photos/square.png", "a beach", "", ""])
    out = tmp_path / "out"
    assert _generate(manifest, "--pipeline", tiny_sd.hf_pipeline_dir, "--salient-checkpoint", tmp_path / "ckpt_base.pth",
                     "--output-dir", out) == 0
    assert seen == [(1, 64, 64, 3), (1, 64, 64, 3)]  # the framed photos, as the reference
    mask = np.asarray(Image.open(out / "masks" / "first.png"))
    assert mask[20:44, 20:44].min() == 204 and mask[:20].max() == 0  # 0.8 * 255, soft as predicted
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["id"], r["prompt"], r["seeds"]) for r in rows] == [("first", "a kitchen", "3"), ("square", "a beach", "0")]
    assert os.path.isfile(out / "generated" / "first_s3.png") and os.path.isfile(out / "generated" / "square_s0.png")


def test_generate_argument_errors(tiny_sd, tmp_path, capsys):
    photos, masks, _ = _photo_folder(tmp_path)
    common = ["--output-dir", tmp_path / "o", "--prompt", "x"]
    cases = [
        ((photos, "--masks", masks, *common), "--pipeline DIR"),  # no models
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, *common), "no object mask"),
        ((photos, "--si2", tiny_sd.si2_dir, "--masks", masks, *common), "needs --controlnet"),
        ((tmp_path / "missing", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, *common), "no such image"),
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", tmp_path, *common), "no mask for"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert _generate(*args) == 2  # a user error: message, no traceback
        assert message in capsys.readouterr().err
    bad = tmp_path / "badmask"
    bad.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad / "square.png")
    assert _generate(photos / "square.png", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", bad, *common) == 2
    assert "give a mask of the photo itself" in capsys.readouterr().err
