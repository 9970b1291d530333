"""Hostile and odd inputs (tests/sb_testkit/hostile_inputs.py) through the one picture reader and the ``mask``
command: each file gives a correct result or fails alone with a clear reason, and nothing is written outside the
output folder."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from salient_background import cli
from salient_background.models.errors import InputError
from salient_background.models.imaging.picture_files import open_picture
from salient_background.models.runs import item_ids
from sb_testkit.hostile_inputs import SIZE, displayed_pattern, tree_listing, write_corpus

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what `mask` picks up in a folder (.gif only given by name)


@pytest.fixture
def corpus(tmp_path):
    return tmp_path / "tree" / "corpus", write_corpus(tmp_path / "tree" / "corpus")


def _red_top_quarter(red: np.ndarray) -> None:
    """The pattern's red channel, as the file's viewer shows it (0..255 values, lossy formats within 8)."""
    h = red.shape[0]
    assert red.shape == (SIZE[1], SIZE[0])
    assert np.abs(red[: h // 4].astype(int) - 255).max() <= 8 and red[h // 4:].max() <= 8


def test_the_reader_gives_each_file_its_displayed_picture_or_a_clear_error(corpus, monkeypatch):
    folder, cases = corpus
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    for case in cases:
        path = os.path.join(folder, case.name)
        if case.kind == "ok":
            picture = open_picture(path)
            assert picture.size == case.size, case.name
            if case.patterned:
                _red_top_quarter(np.asarray(picture.convert("RGB"))[..., 0])
        else:
            before = len(decoded)
            with pytest.raises(InputError) as err:
                open_picture(path)
            assert case.name in str(err.value) and "\n" not in str(err.value)
            if case.kind == "bomb":
                assert len(decoded) == before, "a decompression bomb was decoded"
                assert "refused unread" in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        open_picture(folder / "gone.png")


def test_animated_pictures_give_their_first_frame(corpus):
    folder, _ = corpus
    for name in ("animated.gif", "animated.webp"):
        with Image.open(folder / name) as raw:
            assert getattr(raw, "n_frames", 1) == 2  # the file really is animated
        np.testing.assert_array_equal(np.asarray(open_picture(folder / name).convert("RGB"))[..., 0],
                                      displayed_pattern()[..., 0])


def test_ids_never_leave_the_folder_and_fit_a_file_name():
    for text in ("../../etc/passwd", "..", "a..b", ".hidden", "/abs/path", "x" * 300, "é" * 200, "caf\udce9"):
        name = item_ids.safe_name(text)
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
        assert len(name.encode("utf-8", "surrogatepass")) <= item_ids.MAX_NAME_BYTES
        assert item_ids.safe_name(name) == name  # stable: a resumed run finds the same ids
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    assert item_ids.safe_name(long_a) != item_ids.safe_name(long_b)  # cut names keep a hash of the whole name
    ids = item_ids.assign_ids([("caf\udce9.png", "caf\udce9"), ("caf_.png", "caf_")])  # a shared base, not UTF-8
    assert len(set(ids.values())) == 2


@pytest.fixture
def stub_salient(monkeypatch):
    """InSPyReNet stand-in: the mask is the photo's red channel (the corpus pattern shows which way up it was)."""
    import salient_background.models.networks.salient as salient

    class Stub:
        def predict(self, images, **kw):
            return salient.SalientPrediction(maps=images[..., 0].float(), raw_max=torch.ones(images.shape[0]),
                                             empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: Stub())


def test_mask_over_the_whole_corpus(corpus, tmp_path, stub_salient, capsys):
    folder, cases = corpus
    out = tmp_path / "tree" / "out"
    (tmp_path / "salient.pth").write_bytes(b"")  # named files must exist; the stub stands in for the model
    before = tree_listing(tmp_path)
    code = cli.main(["mask", str(folder), "--output-dir", str(out), "--checkpoint", str(tmp_path / "salient.pth"),
                     "--device", "cpu",
                     "--no-progress"])
    assert code == 1  # some items failed; the others finished
    assert "Traceback" not in capsys.readouterr().err
    written = tree_listing(tmp_path) - before
    assert written and all(p.startswith(os.path.join("tree", "out")) for p in written)
    assert all(len(os.fsencode(name)) <= 255 for name in os.listdir(out))

    taken = [c for c in cases if c.name.lower().endswith(FOLDER_SUFFIXES)]
    with open(out / "mask_manifest.json", encoding="utf-8") as fh:
        manifest = json.load(fh)
    failed = {os.path.basename(f["source"]): f["reason"] for f in manifest["failed"]}
    assert set(failed) == {c.name for c in taken if c.kind != "ok"}
    assert all(os.path.basename(f) in reason and "\n" not in reason for f, reason in failed.items())
    rows = {os.path.basename(r["source"]): r for r in manifest["rows"]}
    assert set(rows) == {c.name for c in taken if c.kind == "ok"}
    for case in taken:
        if case.kind != "ok":
            continue
        row = rows[case.name]
        assert ".." not in row["id"] and "/" not in row["id"]
        with Image.open(out / row["mask"]) as mask, Image.open(out / row["cutout"]) as cutout:
            assert mask.size == case.size and cutout.size == case.size, case.name  # the displayed orientation
            if case.patterned:
                _red_top_quarter(np.asarray(mask))
    with open(out / "mask_manifest.csv", "rb") as fh:  # a name that is not UTF-8 is kept as its own bytes
        assert b"caf\xe9_latin1.png" in fh.read()


def test_the_mask_file_reader_refuses_the_same_files_and_turns_phone_photos_upright(corpus):
    from salient_background.models.imaging.image_ops import read_mask_file

    folder, cases = corpus
    for case in cases:
        path = os.path.join(folder, case.name)
        if case.kind == "ok":
            assert read_mask_file(path).shape == (case.size[1], case.size[0]), case.name
        else:
            with pytest.raises(InputError, match="cannot read mask"):
                read_mask_file(path)
    # an EXIF-rotated picture used as a mask reads as shown (a mask drawn on the displayed photo fits it)
    upright = read_mask_file(os.path.join(folder, "plain.png"))
    for rotated in ("exif6.jpg", "exif8.jpg"):
        assert np.abs(read_mask_file(os.path.join(folder, rotated)) - upright).max() <= 8 / 255
