"""The trainer checks every manifest row's files before loading any model: bad rows stop the run with one message,
or are skipped (``--skip-bad-rows``) and recorded so that a resumed run trains on the same rows.

The dataset is the training tests' synthetic one (red disks, prepared with the colour-threshold segmenter), copied
into each test's folder and broken there: a mask deleted, a mask overwritten with garbage bytes, a mask of another
size."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sb_testkit.training_runs import reset_accelerate, train_in_process
from test_training import RedSegmenter, _config, make_photo, make_photo_folder, save_photo

from salient_background.models.errors import InputError
from salient_background.training import data as tdata
from salient_background.training import dataset_check
from salient_background.training.config import TrainConfig
from salient_background.training.prepare import prepare_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BROKEN_LINES = (2, 4, 7)  # manifest lines: mask missing, mask of garbage bytes, mask of another size


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory):
    """8 prepared rows, self-contained (photos copied in) so that each test can copy the folder and break it."""
    root = tmp_path_factory.mktemp("check_data")
    make_photo_folder(str(root / "photos"), n=8)
    prepare_dataset(str(root / "dataset"), image_dirs=[str(root / "photos")], segmenter=RedSegmenter(),
                    progress=False, copy_images=True)
    return str(root / "dataset")


def _manifest_lines(folder: str) -> list[dict]:
    with open(os.path.join(folder, "manifest.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def _break(folder: str) -> list[str]:
    """Break the masks of BROKEN_LINES (1-based); returns the masks' paths as the manifest gives them."""
    rows = _manifest_lines(folder)
    missing, garbage, resized = (rows[n - 1]["mask"] for n in BROKEN_LINES)
    os.remove(os.path.join(folder, missing))
    with open(os.path.join(folder, garbage), "wb") as fh:
        fh.write(b"\x89PNG this is not an image")
    with Image.open(os.path.join(folder, resized)) as im:
        im.resize((im.width + 4, im.height)).save(os.path.join(folder, resized))
    return [missing, garbage, resized]


@pytest.fixture
def broken_dataset(clean_dataset, tmp_path):
    folder = str(tmp_path / "dataset")
    shutil.copytree(clean_dataset, folder)
    return folder, _break(folder)


def _no_weights_read(monkeypatch):
    from salient_background.training import loop

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data check")

    monkeypatch.setattr(loop, "load_base_components", refuse)


# ------------------------------------------------------------------------------------------------ refusal
def test_bad_rows_stop_the_run_with_one_message_before_any_model_loads(tiny_sd, broken_dataset, tmp_path,
                                                                       monkeypatch, capsys):
    from salient_background.training.cli import main

    folder, masks = broken_dataset
    _no_weights_read(monkeypatch)
    reset_accelerate()
    try:
        code = main(["train", "--data", folder, "--base-model", tiny_sd.si2_dir, "--output-dir",
                     str(tmp_path / "run"), "--max-train-steps", "1", "--report-to", "none", "--batch-size", "2"])
    finally:
        reset_accelerate()
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("error:") == 1
    assert "3 of 8 rows" in err and "--skip-bad-rows" in err
    lines = [line for line in err.splitlines() if "manifest.jsonl line" in line]
    assert [int(line.split("line ")[1].split(":")[0]) for line in lines] == list(BROKEN_LINES)
    assert "mask not found" in lines[0] and masks[0] in lines[0]
    assert "mask unreadable" in lines[1] and masks[1] in lines[1]
    assert "is 84x96 but its photo" in lines[2] and "is 80x96" in lines[2]
    assert not os.path.exists(tmp_path / "run" / dataset_check.DATA_CHECK)


def test_the_message_lists_the_first_rows_and_counts_the_rest(clean_dataset, tmp_path):
    folder = str(tmp_path / "dataset")
    shutil.copytree(clean_dataset, folder)
    for row in _manifest_lines(folder):
        os.remove(os.path.join(folder, row["mask"]))
    with open(os.path.join(folder, "manifest.jsonl"), "a") as fh:  # three more rows, each unreadable as a row
        fh.write("{not json\n" + json.dumps({"image": "images/x.png"}) + "\n")
        fh.write(json.dumps({"image": "a.png", "mask": "a.png", "captions": [3]}) + "\n")
    cfg = TrainConfig(data=folder, output_dir=str(tmp_path / "run"), batch_size=2)
    with pytest.raises(InputError) as caught:
        dataset_check.training_rows(cfg, resuming=False)
    message = str(caught.value)
    assert message.startswith("11 of 11 rows")
    assert message.count("manifest.jsonl line") == dataset_check.LISTED and "... and 1 more" in message
    _, entries = tdata.parse_manifest(folder)
    bad = {b.line: b.reason for b in dataset_check.find_bad_rows(entries)}
    assert sorted(bad) == list(range(1, 12))
    assert bad[9].startswith("not a JSON object") and "no 'mask' path" in bad[10]
    assert "caption" in bad[11]
    with pytest.raises(InputError, match="line 9: not a JSON object"):  # before: a raw JSONDecodeError
        tdata.read_manifest(folder)


# ------------------------------------------------------------------------------------------------ skipping
def _without_lines(folder: str, lines) -> str:
    """A copy of the manifest without ``lines``, beside it (same folder, so the relative paths hold)."""
    path = os.path.join(folder, "good_rows.jsonl")
    with open(os.path.join(folder, "manifest.jsonl")) as src, open(path, "w") as dst:
        dst.writelines(line for n, line in enumerate(src, 1) if n not in lines)
    return path


def _weights_equal(a, b) -> bool:
    a, b = a.controlnet.state_dict(), b.controlnet.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_skip_bad_rows_trains_on_the_good_rows_records_them_and_resumes_on_the_same_rows(tiny_sd, clean_dataset,
                                                                                       broken_dataset, tmp_path):
    folder, masks = broken_dataset
    kw = dict(max_train_steps=3, checkpointing_steps=1, learning_rate=1e-3)
    reference = train_in_process(_config(tiny_sd, _without_lines(folder, BROKEN_LINES), tmp_path / "reference", **kw))
    skipped = train_in_process(_config(tiny_sd, folder, tmp_path / "skipped", skip_bad_rows=True, **kw))
    assert skipped.losses == reference.losses and _weights_equal(skipped, reference)
    with open(tmp_path / "skipped" / dataset_check.SKIPPED_ROWS, newline="") as fh:
        listed = list(csv.DictReader(fh))
    assert [int(r["line"]) for r in listed] == list(BROKEN_LINES)
    assert all(m in r["reason"] for m, r in zip(masks, listed))
    record = json.load(open(tmp_path / "skipped" / dataset_check.DATA_CHECK))
    assert [b["line"] for b in record["skipped"]] == list(BROKEN_LINES) and record["rows"] == 8

    # the same run, stopped after a step; the broken masks are then repaired: the resumed run still skips them
    run = tmp_path / "split"
    train_in_process(_config(tiny_sd, folder, run, skip_bad_rows=True, stop_after_steps=1, **kw))
    for mask in masks:
        shutil.copy2(os.path.join(clean_dataset, mask), os.path.join(folder, mask))
    # a row that went bad since, or a changed manifest, cannot give the same rows: refused before any model loads
    good_mask = os.path.join(folder, _manifest_lines(folder)[0]["mask"])
    os.rename(good_mask, good_mask + ".away")
    with pytest.raises(InputError, match="1 rows of .* went bad since .*\n.*line 1: mask not found"):
        train_in_process(_config(tiny_sd, folder, run, resume_from="latest", **kw))
    os.rename(good_mask + ".away", good_mask)
    manifest = os.path.join(folder, "manifest.jsonl")
    original = open(manifest).read()
    with open(manifest, "a") as fh:
        fh.write(original.splitlines()[0] + "\n")
    with pytest.raises(InputError, match="changed since the run"):
        train_in_process(_config(tiny_sd, folder, run, resume_from="latest", **kw))
    with open(manifest, "w") as fh:
        fh.write(original)
    resumed = train_in_process(_config(tiny_sd, folder, run, resume_from="latest", **kw))
    assert [s for s, _ in resumed.losses] == [2, 3]
    assert resumed.losses == reference.losses[1:] and _weights_equal(resumed, reference)
    # a new run in the same folder checks afresh: every row is fine now, nothing is skipped
    assert len(dataset_check.training_rows(_config(tiny_sd, folder, run), resuming=False)) == 8
    assert not os.path.exists(run / dataset_check.SKIPPED_ROWS)


# ------------------------------------------------------------------------------------------------ one row
def test_a_photo_turned_by_its_exif_orientation_is_checked_and_loaded_upright(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: `prepare` saves its mask upright; the check compares
    the upright size and the loader turns the photo upright, so the object lands under its mask."""
    upright = np.zeros((40, 24, 3), np.uint8)
    upright[:20] = (230, 30, 20)  # the object: the top half, red
    upright[20:] = (20, 30, 230)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 40 wide, 24 high on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    mask = np.zeros((40, 24), np.uint8)
    mask[:20] = 255
    Image.fromarray(mask).save(tmp_path / "phone_mask.png")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"image": "phone.jpg", "mask": "phone_mask.png",
                                                         "captions": ["a phone photo"]}) + "\n")
    _, entries = tdata.parse_manifest(str(tmp_path))
    assert dataset_check.find_bad_rows(entries) == []
    ds = tdata.SalientTrainingDataset([entries[0].row], tdata.SampleConfig(resolution=24, resize_to=24))
    photo, _ = ds.read_row(0)
    assert photo.size == (24, 40)
    image, object_mask = ds.load_crop(0, None)  # the centre 24 x 24: rows 8..31 of the upright photo
    assert float(object_mask.mean()) == pytest.approx(0.5, abs=0.05)
    assert float(image[0][object_mask > 0.5].mean()) > 0.8  # red under the mask
    assert float(image[2][object_mask < 0.5].mean()) > 0.8  # blue outside it


def test_the_check_runs_the_same_on_a_thread_pool(clean_dataset, tmp_path):
    folder = str(tmp_path / "dataset")
    shutil.copytree(clean_dataset, folder)
    _break(folder)
    _, entries = tdata.parse_manifest(folder)
    many = [tdata.ManifestEntry(n + 1, e.row) for n, e in enumerate(entries * 80)]  # 640 rows: several chunks
    one = dataset_check.find_bad_rows(many, workers=1)
    pooled = dataset_check.find_bad_rows(many, workers=4)
    assert one == pooled and len(one) == 3 * 80
    assert [b.line % 8 for b in one[:3]] == [n % 8 for n in BROKEN_LINES]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_picture_declaring_more_pixels_than_allowed_is_a_bad_row(clean_dataset, monkeypatch):
    """The loader refuses a picture over PIL's pixel limit unread (a decompression bomb); PIL itself only warns up to
    twice the limit, so the check applies the limit too. Here the limit is lowered below the 80x96 photos."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    _, entries = tdata.parse_manifest(clean_dataset)
    bad = dataset_check.find_bad_rows(entries, workers=1)
    assert len(bad) == 8 and all("photo unreadable" in b.reason and "80x96 pixels" in b.reason for b in bad)


def test_damaged_pixels_behind_a_good_header_fail_at_load_naming_the_file(clean_dataset, tmp_path):
    """Only headers are checked: a mask cut short passes the check, then the loader's error names it (no raw
    decoder traceback)."""
    folder = str(tmp_path / "dataset")
    shutil.copytree(clean_dataset, folder)
    mask = os.path.join(folder, _manifest_lines(folder)[0]["mask"])
    data = open(mask, "rb").read()
    with open(mask, "wb") as fh:
        fh.write(data[: len(data) // 2])
    _, entries = tdata.parse_manifest(folder)
    assert dataset_check.find_bad_rows(entries) == []
    ds = tdata.SalientTrainingDataset([e.row for e in entries], tdata.SampleConfig(resolution=64, resize_to=80))
    with pytest.raises(InputError, match="cannot read the training photo .* or its mask '.*' .*truncated.*resume"):
        ds[0]
    assert mask in str(pytest.raises(InputError, ds.read_row, 0).value)


# ------------------------------------------------------------------------------------------------ prepare
def test_prepare_reports_an_unreadable_mask_per_photo(tmp_path):
    """Existing masks: one too large to decode safely (PIL's DecompressionBombError, which is no OSError), one of
    garbage bytes: each photo is rejected with its reason, the others kept."""
    import struct
    import zlib

    photos, masks = tmp_path / "photos", tmp_path / "masks"
    for i in range(3):
        image, mask = make_photo(48, 40, seed=i)
        save_photo(str(photos / f"p{i}.png"), image)
        save_photo(str(masks / f"p{i}.png"), mask[..., None].expand(48, 40, 3).contiguous())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # a 20000 x 20000 grey PNG header
    (masks / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    (masks / "p2.png").write_bytes(b"garbage")
    report = prepare_dataset(str(tmp_path / "ds"), image_dirs=[str(photos)], masks_dir=str(masks), progress=False)
    assert report.kept == 1 and dict(report.rejected) == {"unreadable": 2}
    rejected = {os.path.basename(r["image"]): r["detail"]
                for r in map(json.loads, open(tmp_path / "ds" / "rejected.jsonl"))}
    assert "DecompressionBombError" in rejected["p1.png"] and "UnidentifiedImageError" in rejected["p2.png"]


def test_only_the_main_process_says_what_the_check_found(clean_dataset, tmp_path, caplog):
    """Under torchrun every process checks the rows; the warning and the summary appear once, from the main one."""
    import logging

    folder = str(tmp_path / "dataset")
    shutil.copytree(clean_dataset, folder)
    os.remove(os.path.join(folder, _manifest_lines(folder)[0]["mask"]))
    cfg = TrainConfig(data=folder, output_dir=str(tmp_path / "run"), batch_size=2, skip_bad_rows=True)
    os.makedirs(cfg.output_dir)  # the trainer made it before the check
    with caplog.at_level(logging.INFO, logger="salient_background"):
        other = dataset_check.training_rows(cfg, resuming=False, world_size=2, is_main=False)
    assert len(other) == 7 and [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    with caplog.at_level(logging.INFO, logger="salient_background"):
        main = dataset_check.training_rows(cfg, resuming=False, world_size=2, is_main=True)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert main == other and len(said) == 2
    assert said[0].startswith("skipping 1 of 8 manifest rows") and said[1].startswith("checked the 8 rows")
