"""``python -m salient_background evaluate`` on a small generated folder: CSV and JSON contents, resume,
settings guard, manifest input, run comparison."""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background.cli import main
from sb_testkit.images import disk_mask, object_on_background, rect_mask
from sb_testkit.sam import cached_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_mask(mask: torch.Tensor, path) -> None:
    Image.fromarray((mask.numpy() * 255).round().astype(np.uint8), mode="L").save(path)


def _save_image(image: torch.Tensor, path) -> None:
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8), mode="RGB").save(path)


@pytest.fixture()
def dataset(tmp_path):
    masks, gen = tmp_path / "masks", tmp_path / "generated"
    masks.mkdir()
    gen.mkdir()
    image, disk = object_on_background(40, 56, seed=2)
    _save_mask(disk, masks / "cat.png")
    _save_mask(rect_mask(40, 56, 10, 10, 30, 40), masks / "cat_black_mask.png")  # as the `mask` command names it
    _save_image(image, gen / "cat.png")
    _save_image(image.flip(1), gen / "cat_1.png")
    _save_image(image * 0.7, gen / "cat_black_seed3.png")
    _save_image(image, gen / "dog.png")  # matches no mask: skipped with a warning
    return tmp_path


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(dataset, out, *extra):
    return main(["evaluate", "--masks", str(dataset / "masks"), "--generated", str(dataset / "generated"),
                 "--sam", cached_checkpoint("tiny"), "--output", str(out), "--points", "4", "--no-progress",
                 "--device", "cpu", *extra])


def test_csv_rows_match_a_direct_computation(dataset, tmp_path):
    from salient_background.models.scoring.expansion import score_expansion
    from salient_background.models.networks.sam import load_sam

    out = tmp_path / "run"
    assert _run(dataset, out) == 0
    rows = _read_csv(out / "expansion.csv")
    by_name = {os.path.basename(r["generated"]): r for r in rows}
    assert set(by_name) == {"cat.png", "cat_1.png", "cat_black_seed3.png"}
    assert by_name["cat_1.png"]["id"] == "cat" and by_name["cat_black_seed3.png"]["id"] == "cat_black"
    assert os.path.basename(by_name["cat_black_seed3.png"]["mask"]) == "cat_black_mask.png"
    model = load_sam(cached_checkpoint("tiny")).model
    for name, row in by_name.items():
        img = torch.from_numpy(np.asarray(Image.open(dataset / "generated" / name), dtype=np.float32) / 255)[None]
        mask = torch.from_numpy(np.asarray(Image.open(row["mask"]), dtype=np.float32) / 255)[None]
        expected = score_expansion(model, img, mask, points=4, seed=0).scores[0]
        assert float(row["expansion_px"]) == expected.expansion_px
        assert float(row["expansion_relative"]) == pytest.approx(expected.expansion_relative)
        assert int(row["object_px"]) == expected.object_px and int(row["width"]) == 56
    summary = json.loads((out / "summary.json").read_text())
    rel = np.array([float(r["expansion_relative"]) for r in rows])
    assert summary["images"] == 3
    assert summary["expansion_relative"]["mean"] == pytest.approx(rel.mean())
    assert summary["expansion_relative"]["median"] == pytest.approx(np.median(rel))
    assert summary["expansion_relative"]["percentiles"]["90"] == pytest.approx(np.percentile(rel, 90))
    assert summary["expansion_relative"]["share_above_threshold"] == pytest.approx((rel > 0.05).mean())
    assert summary["settings"]["points"] == 4 and summary["settings"]["sam_variant"] == "custom"


def test_resume_scores_only_what_is_missing(dataset, tmp_path, monkeypatch):
    import salient_background.models.scoring.expansion as expansion

    out = tmp_path / "run"
    assert _run(dataset, out) == 0
    first = _read_csv(out / "expansion.csv")
    text = (out / "expansion.csv").read_text()
    cut = text[: text.rstrip("\n").rfind("\n") + 1 + 25]  # the last row cut short, as by a kill mid-write
    (out / "expansion.csv").write_text(cut)

    calls = []
    real = expansion.score_expansion
    monkeypatch.setattr(expansion, "score_expansion", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _run(dataset, out) == 0
    assert len(calls) == 1
    again = _read_csv(out / "expansion.csv")
    key = lambda r: r["generated"]  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert sorted(map(strip, again), key=key) == sorted(map(strip, first), key=key)
    assert _run(dataset, out) == 0 and len(calls) == 1  # complete: nothing to do


def test_other_settings_are_refused_unless_overwrite(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(dataset, out) == 0
    assert _run(dataset, out, "--seed", "5") == 2
    assert "seed" in capsys.readouterr().err
    assert _run(dataset, out, "--seed", "5", "--overwrite") == 0
    assert json.loads((out / "settings.json").read_text())["seed"] == 5


def test_manifest_input(dataset, tmp_path):
    manifest = dataset / "list.csv"
    manifest.write_text("id,original,mask,generated\nthe_cat,,masks/cat.png,generated/cat.png;generated/cat_1.png\n")
    out = tmp_path / "m"
    assert main(["evaluate", "--manifest", str(manifest), "--sam", cached_checkpoint("tiny"), "--output", str(out),
                 "--points", "4", "--no-progress", "--device", "cpu"]) == 0
    rows = _read_csv(out / "expansion.csv")
    assert [os.path.basename(r["generated"]) for r in rows] == ["cat.png", "cat_1.png"]
    assert {r["id"] for r in rows} == {"the_cat"}


def test_empty_mask_rows_are_nan_and_excluded_from_the_summary(tmp_path):
    masks, gen = tmp_path / "masks", tmp_path / "gen"
    masks.mkdir()
    gen.mkdir()
    image, disk = object_on_background(32, 32)
    _save_mask(disk, masks / "a.png")
    _save_mask(torch.zeros(32, 32), masks / "b.png")
    _save_image(image, gen / "a.png")
    _save_image(image, gen / "b.png")
    out = tmp_path / "out"
    assert main(["evaluate", "--masks", str(masks), "--generated", str(gen), "--sam", cached_checkpoint("tiny"),
                 "--output", str(out), "--points", "2", "--no-progress", "--device", "cpu"]) == 0
    rows = {os.path.basename(r["generated"]): r for r in _read_csv(out / "expansion.csv")}
    assert math.isnan(float(rows["b.png"]["expansion_px"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["expansion_relative"]["count"] == 1 and summary["expansion_relative"]["undefined"] == 1


def test_compare_prints_the_ratio_of_mean_expansion(tmp_path, capsys):
    for name, mean in (("si2", 0.36), ("si2_cn", 0.10)):
        (tmp_path / name).mkdir()
        summary = {"images": 4, "settings": {"points": 8, "seed": 0, "mask_choice": "auto", "sam_variant": "vit_h"},
                   "expansion_relative": {"mean": mean}, "expansion_px": {"mean": mean * 1000}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert main(["evaluate", "--compare", str(tmp_path / "si2"), str(tmp_path / "si2_cn")]) == 0
    out = capsys.readouterr().out
    assert "relative to the object): A 0.36, B 0.1 -> A/B = 3.60x" in out
    assert "(pixels): A 360, B 100 -> A/B = 3.60x" in out
    assert main(["evaluate", "--compare", str(tmp_path / "si2"), str(tmp_path / "missing")]) == 2


def test_folder_without_matches_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "g").mkdir()
    _save_mask(disk_mask(8, 8, 4, 4, 2), tmp_path / "m" / "x.png")
    _save_image(torch.rand(8, 8, 3), tmp_path / "g" / "y.png")
    assert main(["evaluate", "--masks", str(tmp_path / "m"), "--generated", str(tmp_path / "g"), "--sam",
                 cached_checkpoint("tiny"), "--output", str(tmp_path / "o")]) == 2
    assert "matches a mask" in capsys.readouterr().err


def test_salient_column_uses_the_salient_model_api(dataset, tmp_path, monkeypatch):
    """--salient-checkpoint adds the notebook's signed area change, computed through models/networks/salient.py's
    load_salient_model(...).predict(images, resize).maps (replaced here by a stand-in with that API)."""
    from types import SimpleNamespace

    import salient_background.models.networks.salient as salient

    calls = []

    class StandIn:
        def predict(self, images, resize):
            calls.append((tuple(images.shape), resize))
            maps = torch.zeros(images.shape[:3])
            maps[:, :20, :] = 1.0  # the top half of a 40-row image: area fraction 0.5
            return SimpleNamespace(maps=maps, raw_max=None, empty=None)

    def fake_load(path, mode="base", device=None, dtype=torch.float32):
        calls.append(("load", os.path.basename(path), mode))
        return StandIn()

    monkeypatch.setattr(salient, "load_salient_model", fake_load)
    ckpt = tmp_path / "ckpt_fast.pth"
    ckpt.write_bytes(b"x")
    out = tmp_path / "sal"
    assert _run(dataset, out, "--salient-checkpoint", str(ckpt), "--salient-mode", "fast") == 0
    assert calls[0] == ("load", "ckpt_fast.pth", "fast")
    assert calls[1:] == [((1, 40, 56, 3), "dynamic")] * 3
    rows = {os.path.basename(r["generated"]): r for r in _read_csv(out / "expansion.csv")}
    disk_area = float((np.asarray(Image.open(dataset / "masks" / "cat.png")) >= 128).mean())
    assert float(rows["cat.png"]["salient_signed"]) == pytest.approx(0.5 - disk_area)
    assert float(rows["cat_black_seed3.png"]["salient_signed"]) == pytest.approx(0.5 - 600 / (40 * 56))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["salient_signed"]["count"] == 3


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture()
def no_model_load(monkeypatch):
    """Fails the test if evaluate loads SAM: each of these inputs must be refused before any model loads."""
    import salient_background.models.networks.sam as sam

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(sam, "load_sam", refuse)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [l for l in err.splitlines() if l.startswith("error: ")]
    return line


def test_missing_manifest_names_the_file(tmp_path, capsys, no_model_load):
    assert main(["evaluate", "--manifest", str(tmp_path / "missing.csv"), "--sam", cached_checkpoint("tiny"),
                 "--output", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "manifest" in line and "missing.csv" in line and "not found" in line
    assert not (tmp_path / "o").exists()


def test_manifest_naming_a_missing_image_is_refused_before_loading_sam(dataset, tmp_path, capsys, no_model_load):
    manifest = dataset / "list.csv"
    manifest.write_text("mask,generated\nmasks/cat.png,generated/nope.png\n")
    assert main(["evaluate", "--manifest", str(manifest), "--sam", cached_checkpoint("tiny"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "nope.png" in _one_error_line(capsys)


def test_unknown_sam_name_is_refused_with_the_registry_hint(dataset, tmp_path, capsys, no_model_load, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert _run(dataset, tmp_path / "o", "--sam", "sam_vit_b_01ec64.pth") == 2
    line = _one_error_line(capsys)
    assert "sam_vit_b_01ec64.pth" in line and "python -m salient_background download sam-vit-b" in line
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in line
    assert line.count("download sam-vit-b") == 1  # the hint once


def test_sam_download_name_finds_the_file_in_comfyuis_sams_folder(dataset, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "ComfyUI"
    (root / "models" / "sams").mkdir(parents=True)
    shutil.copy(cached_checkpoint("tiny"), root / "models" / "sams" / "sam_vit_b_01ec64.pth")
    monkeypatch.setenv("COMFYUI_PATH", str(root))
    from salient_background.commands.evaluate import resolve_sam

    assert resolve_sam("sam-vit-b") == str(root / "models" / "sams" / "sam_vit_b_01ec64.pth")


@pytest.mark.parametrize("device,expected", [("gpu0", "unknown device"), ("cuda", "CUDA")])
def test_bad_device_is_one_error_line(dataset, tmp_path, capsys, no_model_load, device, expected):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert _run(dataset, tmp_path / "o", "--device", device) == 2
    assert expected in _one_error_line(capsys)


def test_output_path_that_is_a_file_is_one_error_line(dataset, tmp_path, capsys, no_model_load):
    (tmp_path / "taken").write_text("x")
    assert _run(dataset, tmp_path / "taken") == 2
    assert "is a file" in _one_error_line(capsys)


def test_unreadable_image_or_mask_is_reported_and_skipped(dataset, tmp_path, capsys, caplog):
    (dataset / "generated" / "cat_2.png").write_bytes(b"not an image")  # pairs with cat.png
    (dataset / "masks" / "bird.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _save_image(torch.rand(40, 56, 3), dataset / "generated" / "bird.png")
    out = tmp_path / "run"
    assert _run(dataset, out) == 1  # some items failed
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "2 image(s) could not be scored" in captured.err
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(skipped) == 2 and all(m.startswith("skipped ") for m in skipped)
    scored = {os.path.basename(r["generated"]) for r in _read_csv(out / "expansion.csv")}
    assert scored == {"cat.png", "cat_1.png", "cat_black_seed3.png"}  # the rest of the batch went on
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3
    failed = {os.path.basename(f["generated"]): f["reason"] for f in summary["failed"]}
    assert set(failed) == {"cat_2.png", "bird.png"}
    assert "generated image" in failed["cat_2.png"] and "mask" in failed["bird.png"]
    # a re-run skips the recorded failures (exit 0: nothing failed anew) and keeps the scored rows; retried, they
    # fail again (exit 1)
    assert _run(dataset, out) == 0
    assert _run(dataset, out, "--retry-failed") == 1
    assert len(_read_csv(out / "expansion.csv")) == 3


def test_missing_salient_checkpoint_is_refused_before_loading_sam(dataset, tmp_path, capsys, no_model_load):
    assert _run(dataset, tmp_path / "o", "--salient-checkpoint", str(tmp_path / "nope.pth")) == 2
    assert "nope.pth" in _one_error_line(capsys)


def test_failures_are_skipped_by_a_rerun_unless_retried_and_a_dry_run_loads_no_model(dataset, tmp_path, capsys,
                                                                                       monkeypatch):
    import salient_background.models.scoring.expansion as expansion

    (dataset / "generated" / "cat_2.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    assert _run(dataset, out) == 1
    calls = []
    real = expansion.score_expansion
    monkeypatch.setattr(expansion, "score_expansion", lambda *a, **k: calls.append(1) or real(*a, **k))
    capsys.readouterr()
    assert _run(dataset, out) == 0  # the failure is still recorded: skipped, and said so (nothing new failed)
    captured = capsys.readouterr()
    assert calls == [] and "1 skipped now as failed before" in captured.err and "cat_2.png" in captured.err
    (dataset / "generated" / "cat_2.png").unlink()
    _save_image(torch.rand(40, 56, 3), dataset / "generated" / "cat_2.png")
    # a dry run lists it as failed before, loads nothing and writes nothing
    import salient_background.models.networks.sam as sam

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with monkeypatch.context() as m:
        m.setattr(sam, "load_sam", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
        assert _run(dataset, out, "--dry-run") == 0
    listing = capsys.readouterr().out
    assert "dry run: 4 image(s); 0 to do, 3 done, 1 failed before (skipped)" in listing
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # --retry-failed scores it now; the summary no longer lists it
    assert _run(dataset, out, "--retry-failed") == 0 and calls == [1]
    assert "failed" not in json.loads((out / "summary.json").read_text())
    assert len(_read_csv(out / "expansion.csv")) == 4


def test_a_rerun_with_nothing_new_leaves_the_result_files_untouched(dataset, tmp_path):
    out = tmp_path / "run"
    assert _run(dataset, out) == 0
    results = ("expansion.csv", "summary.json", "settings.json")
    before = {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in results}
    assert b"seconds" not in before["expansion.csv"][1]  # timings are apart: one line per image scored
    assert len((out / "timings.jsonl").read_text().splitlines()) == 3
    assert _run(dataset, out) == 0
    assert {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in results} == before
    assert len((out / "timings.jsonl").read_text().splitlines()) == 3


def test_a_16_bit_mask_means_the_same_to_generate_and_evaluate(tiny_sd, tmp_path):
    """The one mask reader: a 16-bit mask at half scale is a half-strength object for both commands (generate once
    read it clipped to 8 bits: white)."""
    from salient_background.commands.evaluate import load_mask

    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photos / "p.png")
    sixteen = np.zeros((64, 64), np.uint16)
    sixteen[16:48, 16:48] = 32768  # about half of 65535
    Image.fromarray(sixteen).save(masks / "p_mask.png")
    assert Image.open(masks / "p_mask.png").mode.startswith("I")
    assert main(["generate", str(photos), "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", str(masks), "--prompt",
                 "x", "--size", "64", "--steps", "1", "--no-progress", "--device", "cpu",
                 "--output-dir", str(tmp_path / "out")]) == 0
    generate_reads = np.asarray(Image.open(tmp_path / "out" / "masks" / "p.png"))  # 64x64: written as read
    evaluate_reads = load_mask(str(masks / "p_mask.png"))[0].numpy()
    assert generate_reads[16:48, 16:48].min() == generate_reads[16:48, 16:48].max() == 128
    assert np.array_equal(generate_reads, np.rint(evaluate_reads * 255).astype(np.uint8))
