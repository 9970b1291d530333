"""``python -m salient_background generate`` on a tiny folder with the tiny SI2 + ControlNet models."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image


from salient_background import cli
from sb_testkit.progress import record_bars


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _generate(*args, steps: int = 2) -> int:
    return cli.main(["generate", *map(str, args), "--size", "64", "--steps", str(steps), "--no-progress", "--device", "cpu"])


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
    import salient_background.models.networks.salient as salient

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
    # a mask of another size fails that photo alone: reported, recorded in the manifest, the run goes on (exit 1)
    assert _generate(photos / "square.png", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", bad, *common) == 1
    assert "give a mask of the photo itself" in capsys.readouterr().err
    failed = json.loads((tmp_path / "o" / "manifest.json").read_text())["failed"]
    assert [f["id"] for f in failed] == ["square"] and "give a mask of the photo itself" in failed[0]["reason"]


# ---------------------------------------------------------------------------------------------- re-runs and the manifest
def _one_photo(tmp_path):
    photos, masks, _ = _photo_folder(tmp_path)
    (photos / "wide.png").unlink()
    return photos, masks


def _manifest_bytes(out):
    return (out / "manifest.json").read_bytes(), (out / "manifest.csv").read_bytes()


def test_rerun_with_other_settings_refuses_and_keeps_the_manifest_true(tiny_sd, tmp_path, capsys):
    photos, masks = _one_photo(tmp_path)
    out = tmp_path / "out"
    common = [photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--output-dir", out]
    assert _generate(*common, "--prompt", "a swan") == 0
    before = _manifest_bytes(out)
    picture = (out / "generated" / "square_s0.png").read_bytes()
    meta = json.loads(before[0])
    assert meta["rows"][0]["settings"]["prompt"] == "a swan" and meta["rows"][0]["images"][0]["seed"] == 0
    for extra, named in [(["--prompt", "a kitchen"], "prompt"), (["--prompt", "a swan", "--paste-back"], "paste_back"),
                         (["--prompt", "a swan", "--controlnet-scale", "0"], "controlnet_scale"),
                         (["--prompt", "a swan", "--guidance", "3"], "guidance"),
                         (["--prompt", "a swan", "--scheduler", "ddim"], "scheduler")]:
        capsys.readouterr()
        assert _generate(*common, *extra) == 2, extra
        err = capsys.readouterr().err
        assert "other settings" in err and named in err and "--overwrite" in err
        assert _manifest_bytes(out) == before  # the old images keep their true record
        assert (out / "generated" / "square_s0.png").read_bytes() == picture
    assert _generate(*common, "--prompt", "a swan", steps=3) == 2
    assert "steps" in capsys.readouterr().err and _manifest_bytes(out) == before
    # same settings: nothing to do, nothing rewritten
    capsys.readouterr()
    assert _generate(*common, "--prompt", "a swan") == 0
    assert "nothing to do" in capsys.readouterr().out and _manifest_bytes(out) == before
    # --overwrite redoes it with the new settings, and the manifest says so
    assert _generate(*common, "--prompt", "a kitchen", "--overwrite") == 0
    rows = json.loads((out / "manifest.json").read_text())["rows"]
    assert [(r["id"], r["prompt"], r["settings"]["prompt"], r["seeds"]) for r in rows] == [("square", "a kitchen", "a kitchen", "0")]
    assert (out / "generated" / "square_s0.png").read_bytes() != picture
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave no temporary files


def test_rerun_adds_to_the_rows_of_earlier_runs_without_rewriting_them(tiny_sd, tmp_path):
    photos, masks, _ = _photo_folder(tmp_path)
    out = tmp_path / "out"
    common = ["--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan", "--output-dir", out]
    assert _generate(photos / "square.png", *common, "--restore") == 0
    first = json.loads((out / "manifest.json").read_text())["rows"][0]
    assert first["restored"] == "restored/square_s0.png"
    # another photo, then another seed of the first: earlier rows stay as they were (restored included)
    assert _generate(photos / "wide.png", *common) == 0
    assert _generate(photos / "square.png", *common, "--seed", "1") == 0
    rows = {r["id"]: r for r in json.loads((out / "manifest.json").read_text())["rows"]}
    assert set(rows) == {"square", "wide"}
    assert rows["square"]["seeds"] == "0;1" and rows["square"]["restored"] == "restored/square_s0.png"
    assert rows["square"]["settings"] == first["settings"]
    with open(out / "manifest.csv", newline="") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert table["square"]["generated"] == "generated/square_s0.png;generated/square_s1.png"
    assert table["wide"]["generated"] == "generated/wide_s0.png"


def test_images_the_manifest_does_not_describe_are_not_taken_as_done(tiny_sd, tmp_path, capsys):
    photos, masks = _one_photo(tmp_path)
    out = tmp_path / "out"
    (out / "generated").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(out / "generated" / "square_s0.png")
    args = [photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan", "--output-dir", out]
    assert _generate(*args) == 2
    assert "does not describe" in capsys.readouterr().err
    assert _generate(*args, "--overwrite") == 0
    assert np.asarray(Image.open(out / "generated" / "square_s0.png")).max() > 0


# ---------------------------------------------------------------------------------------------- ids
def test_photos_sharing_a_name_get_distinct_outputs(tiny_sd, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    for rel in ("a/x.png", "b/x.png", "x_2.png", "plain.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / rel)
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ("a__x", "b__x", "x_2", "plain"):
        Image.fromarray(np.full((64, 64), 255 * (stem != "plain"), np.uint8)).save(masks / f"{stem}_mask.png")
    out = tmp_path / "out"
    assert _generate(folder, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan",
                     "--output-dir", out) == 0
    assert sorted(p.name for p in (out / "generated").iterdir()) == ["a__x_s0.png", "b__x_s0.png", "plain_s0.png", "x_2_s0.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a__x.png", "b__x.png", "plain.png", "x_2.png"]
    assert np.asarray(Image.open(out / "masks" / "plain.png")).max() == 0  # each photo got its own mask


def test_collect_items_ids_are_unique_and_independent_of_order(tmp_path):
    from salient_background.commands.generate import collect_items

    for rel in ("a/x.png", "b/x.png", "x_2.png", "x.png", "x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    singles = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "x_2.png")]
    ids = {os.path.relpath(i.path, tmp_path): i.id for i in collect_items(singles)}
    assert len(set(ids.values())) == 3 and ids["x_2.png"] == "x_2"
    assert ids["a/x.png"].startswith("x+") and ids["b/x.png"].startswith("x+")
    assert {os.path.relpath(i.path, tmp_path): i.id for i in collect_items(singles[::-1])} == ids
    in_folder = {os.path.relpath(i.path, tmp_path): i.id for i in collect_items([str(tmp_path)])}
    assert in_folder["a/x.png"] == "a__x" and in_folder["x_2.png"] == "x_2"
    assert in_folder["x.png"] != in_folder["x.jpg"] and len(set(in_folder.values())) == 5
    # the same file given twice (the folder and a file in it) is one input
    assert len(collect_items([str(tmp_path), str(tmp_path / "x_2.png")])) == 5


# ---------------------------------------------------------------------------------------------- checks before heavy work
def _forbid_models(monkeypatch):
    import salient_background.models.generation.loading as loading
    import salient_background.models.networks.salient as salient

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(salient, "load_salient_model", forbidden)
    monkeypatch.setattr(loading, "pipeline_from_plan", forbidden)


def test_bad_options_fail_before_any_model_or_output(tiny_sd, tmp_path, monkeypatch, capsys):
    photos, masks, _ = _photo_folder(tmp_path)
    ckpt = tmp_path / "ckpt_base.pth"
    ckpt.write_bytes(b"")
    _forbid_models(monkeypatch)
    out = tmp_path / "o"
    common = ["--output-dir", out, "--prompt", "x", "--salient-checkpoint", ckpt]
    cases = [
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--scheduler", "bogus", *common), "unknown --scheduler 'bogus'"),
        ((photos, "--si2", tmp_path / "nope", "--controlnet", tiny_sd.hf_pipeline_dir, *common), "--si2"),
        ((photos, "--si2", tiny_sd.si2_dir, "--controlnet", tmp_path / "nope.pth", *common), "--controlnet"),
        ((photos, "--pipeline", tmp_path / "nope", *common), "--pipeline"),
        ((photos, "--pipeline", tiny_sd.si2_dir, *common), "no 'controlnet/' folder"),
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--output-dir", out, "--prompt", "x",
          "--salient-checkpoint", tmp_path / "missing.pth"), "--salient-checkpoint"),
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, *common, "--device", "gpu0"), "unknown device"),
        ((photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "x",
          "--output-dir", ckpt), "is a file"),
    ]
    if not torch.cuda.is_available():
        cases.append(((photos, "--pipeline", tiny_sd.hf_pipeline_dir, *common, "--device", "cuda"), "no usable CUDA"))
    for args, message in cases:
        capsys.readouterr()
        assert cli.main(["generate", *map(str, args), "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (args, err)
        assert not out.exists()  # nothing written


def test_a_run_with_nothing_to_do_does_not_run_the_salient_model_again(tiny_sd, tmp_path, monkeypatch, capsys):
    import salient_background.models.networks.salient as salient

    photos, _, _ = _photo_folder(tmp_path)
    ckpt = tmp_path / "ckpt_base.pth"
    ckpt.write_bytes(b"")
    loads = []

    class StubSegmenter:
        def predict(self, images, **kw):
            maps = torch.zeros(images.shape[:3])
            maps[:, 8:56, 8:56] = 1.0
            return salient.SalientPrediction(maps=maps, raw_max=torch.ones(images.shape[0]), empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: loads.append(1) or StubSegmenter())
    args = [photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--salient-checkpoint", ckpt, "--prompt", "a swan",
            "--output-dir", tmp_path / "out"]
    assert _generate(*args) == 0 and loads == [1]
    masks_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "masks").iterdir()}
    capsys.readouterr()
    assert _generate(*args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert loads == [1]  # not loaded (nor run) again
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "masks").iterdir()} == masks_before


# ---------------------------------------------------------------------------------------------- feedback
def test_progress_bar_counts_every_image_of_every_batch(tiny_sd, tmp_path, monkeypatch):
    bars = record_bars(monkeypatch)
    photos, masks = _one_photo(tmp_path)
    assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan",
                     "--num-images", "7", "--batch-size", "4", "--output-dir", tmp_path / "out") == 0
    assert len(list((tmp_path / "out" / "generated").iterdir())) == 7
    assert len(bars) == 1 and bars[0].total == 7 * 2 and bars[0].n == bars[0].total  # 7 images x 2 steps


def test_warns_when_framing_leaves_the_object_tiny(tiny_sd, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 640, 3), 128, np.uint8)).save(photos / "strip.png")  # 640x40 -> 64x4 on a 64 canvas
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((40, 640), np.uint8)
    m[:, 100:540] = 255
    Image.fromarray(m).save(masks / "strip_mask.png")
    with caplog.at_level("WARNING", logger="salient_background"):
        assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan",
                         "--output-dir", tmp_path / "out") == 0
    assert any("strip.png" in r.getMessage() and "44x4" in r.getMessage() for r in caplog.records), caplog.text


# ---------------------------------------------------------------------------------------------- mask -> generate
def test_a_photo_whose_mask_step_failed_fails_alone_with_that_reason(tiny_sd, tmp_path, monkeypatch, capsys):
    """The README's flow on a folder with a corrupt photo: `mask` records it as failed; `generate --masks` records it
    as failed for the mask step's reason and makes every other photo (exit 1: a new failure); a rerun skips it
    (exit 0: nothing new failed)."""
    import salient_background.models.networks.salient as salient

    class StubSegmenter:  # a known object: the centre square
        def predict(self, images, **kw):
            maps = torch.zeros(images.shape[:3])
            maps[:, 8:40, 8:40] = 1.0
            return salient.SalientPrediction(maps=maps, raw_max=torch.ones(images.shape[0]), empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: StubSegmenter())
    photos, _, _ = _photo_folder(tmp_path)
    (photos / "broken.png").write_bytes(b"not an image")
    (tmp_path / "ckpt.pth").write_bytes(b"")
    masks, out = tmp_path / "runs" / "masks", tmp_path / "runs" / "out"
    assert cli.main(["mask", str(photos), "--checkpoint", str(tmp_path / "ckpt.pth"), "--output-dir", str(masks),
                     "--no-progress"]) == 1
    mask_reason = json.loads((masks / "mask_manifest.json").read_text())["failed"][0]["reason"]
    capsys.readouterr()
    args = [photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "a swan", "--output-dir", out]
    assert _generate(*args) == 1
    err = capsys.readouterr().err
    assert "no mask for" not in err and f"its mask failed in the mask step: {mask_reason}" in err
    assert sorted(os.listdir(out / "generated")) == ["square_s0.png", "wide_s0.png"]
    failed = json.loads((out / "manifest.json").read_text())["failed"]
    assert [(f["id"], f["reason"]) for f in failed] == [("broken", f"its mask failed in the mask step: {mask_reason}")]
    assert _generate(*args) == 0  # recorded before: skipped, and said so
    assert "skipped now as failed before" in capsys.readouterr().err
    assert _generate(*args, "--dry-run") == 0
    assert "dry run: 3 photo(s); 0 to do (0 image(s)), 2 done, 1 failed before (skipped)" in capsys.readouterr().out


def test_exit_status_is_1_only_for_failures_new_in_this_run_and_0_under_torchrun(tiny_sd, tmp_path, monkeypatch,
                                                                               capsys):
    photos, masks, _ = _photo_folder(tmp_path)
    (photos / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "broken_mask.png")
    args = [photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "x"]
    assert _generate(*args, "--output-dir", tmp_path / "a") == 1  # new failure
    assert _generate(*args, "--output-dir", tmp_path / "a") == 0  # only skipped as failed before
    assert _generate(*args, "--output-dir", tmp_path / "a", "--retry-failed") == 1  # failed anew
    assert _generate(*args, "--output-dir", tmp_path / "a", steps=0) == 2  # a usage error
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # what torchrun sets in its workers
    capsys.readouterr()
    assert _generate(*args, "--output-dir", tmp_path / "b") == 0
    assert "1 item(s) failed in this run; exit status 0 under torchrun" in capsys.readouterr().err


def test_one_generate_run_decides_the_base_once(tiny_sd, tmp_path, monkeypatch):
    """The models are planned once (ModelPlan): one base decision, one ControlNet fit check per run."""
    import salient_background.models.bases as bases
    import salient_background.models.generation.model_plan as model_plan

    calls = {"base": 0, "fits": 0}
    real_base, real_fits = bases.base_of_model, model_plan.check_controlnet_fits

    def counting_base(*a, **k):
        calls["base"] += 1
        return real_base(*a, **k)

    def counting_fits(*a, **k):
        calls["fits"] += 1
        return real_fits(*a, **k)

    monkeypatch.setattr(bases, "base_of_model", counting_base)
    monkeypatch.setattr(model_plan, "base_of_model", counting_base)
    monkeypatch.setattr(model_plan, "check_controlnet_fits", counting_fits)
    photos, masks, _ = _photo_folder(tmp_path)
    assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "x",
                     "--output-dir", tmp_path / "o", steps=1) == 0
    assert calls == {"base": 1, "fits": 1}


def test_the_bar_starts_once_the_models_are_loaded_and_counts_what_is_done(tiny_sd, tmp_path, monkeypatch):
    """Model loading is no step of the bar (and the libraries' loading bars end before ours starts); a resumed run's
    bar starts at what earlier runs did."""
    import salient_background.models.generation.loading as loading

    events = []
    real_load = loading.pipeline_from_plan
    monkeypatch.setattr(loading, "pipeline_from_plan", lambda *a, **k: events.append(("load",)) or real_load(*a, **k))
    record_bars(monkeypatch, events)
    photos, masks, _ = _photo_folder(tmp_path)
    out = tmp_path / "out"
    assert _generate(photos / "square.png", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "x",
                     "--output-dir", out) == 0
    assert events == [("load",), ("bar", 2, 0), ("closed", 2)]  # 1 image x 2 steps, after loading
    events.clear()
    assert _generate(photos, "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", masks, "--prompt", "x",
                     "--output-dir", out) == 0
    assert events == [("load",), ("bar", 4, 2), ("closed", 4)]  # square's 2 steps were done before
