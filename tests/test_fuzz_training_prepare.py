"""``training prepare`` over the hostile-input corpus (tests/sb_testkit/hostile_inputs.py) plus a COCO file whose
file names leave its folder, in one run with --copy-images: each photo is kept or rejected alone with a clear
reason, phone photos are masked as shown, and nothing is written outside the dataset folder."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background.training.cli import main
from salient_background.training.data import read_manifest
from salient_background.training.sources import output_rel
from sb_testkit.hostile_inputs import SIZE, displayed_pattern, tree_listing, write_corpus

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@pytest.fixture
def red_segmenter(monkeypatch):
    """The salient model's stand-in: the mask is the photo's red channel (the corpus pattern's top quarter)."""
    import salient_background.models.networks.salient as salient

    class Red:
        def predict(self, images, **kw):
            return salient.SalientPrediction(maps=images[..., 0].float(), raw_max=torch.ones(images.shape[0]),
                                             empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: Red())


def test_names_that_leave_their_folder_are_flattened_inside_it():
    assert output_rel("a/b.jpg") == os.path.join("a", "b.jpg")
    for name in ("../x.jpg", "/abs/x.jpg", "a/../../x.jpg", ".."):
        rel = output_rel(name)
        assert rel.split(os.sep)[0] == "_outside" and ".." not in rel.split(os.sep), name


def _coco(root):
    """A COCO captions file naming photos outside its images folder (relative ``../`` and absolute)."""
    outside, images = root / "outside", root / "coco_images"
    outside.mkdir()
    images.mkdir()
    for k in (1, 2):
        Image.fromarray(displayed_pattern()).save(outside / f"photo{k}.png")
    names = ["../outside/photo1.png", str(outside / "photo2.png")]
    coco = {"images": [{"id": k, "file_name": n} for k, n in enumerate(names)],
            "annotations": [{"image_id": k, "caption": f"photo {k}"} for k in range(len(names))]}
    (root / "captions.json").write_text(json.dumps(coco))
    return root / "captions.json", images


def test_prepare_over_the_corpus_and_a_coco_file_leaving_its_folder(tmp_path, red_segmenter, capsys):
    root = tmp_path / "tree"
    cases = write_corpus(root / "photos")
    captions, coco_images = _coco(root)
    (root / "salient.pth").write_bytes(b"")
    out = root / "dataset"
    before = tree_listing(tmp_path)
    assert main(["prepare", str(out), "--images", str(root / "photos"), "--coco-captions", str(captions),
                 "--coco-images", str(coco_images), "--salient-checkpoint", str(root / "salient.pth"),
                 "--copy-images", "--quiet", "--device", "cpu"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    written = tree_listing(tmp_path) - before
    assert written and all(p.startswith(os.path.join("tree", "dataset")) for p in written)
    for dirpath, dirnames, filenames in os.walk(out):
        assert all(len(os.fsencode(n)) <= 255 for n in dirnames + filenames)

    taken = [c for c in cases if c.name.lower().endswith(FOLDER_SUFFIXES)]
    with open(out / "rejected.jsonl", encoding="utf-8") as fh:
        rejected = {os.path.basename(r["image"]): r for r in map(json.loads, fh)}
    unreadable = {c.name for c in taken if c.kind != "ok"}
    assert {n for n, r in rejected.items() if r["reason"] == "unreadable"} == unreadable
    assert all(n in rejected[n]["detail"] and "\n" not in rejected[n]["detail"] for n in unreadable)
    # flat pictures have no red object: an empty (strip, 90/255) or full (1x1, 128/255) mask, rejected as such
    assert {n: r["reason"] for n, r in rejected.items() if n not in unreadable} == {
        "strip.png": "empty_mask", "one_pixel.png": "full_mask"}

    rows = read_manifest(str(out / "manifest.jsonl"))  # the training loader's own reading of it
    kept = {os.path.basename(r["image"]): r for r in rows}
    outside = {n for n in kept if n.endswith("outside__photo1.png") or n.endswith("outside__photo2.png")}
    assert len(outside) == 2 and set(kept) - outside == {c.name for c in taken if c.name not in rejected}
    for row in rows:
        assert os.path.isfile(row["image"]) and os.path.isfile(row["mask"])  # a non-UTF-8 name too
        assert os.path.commonpath([row["image"], str(out)]) == str(out)  # copied inside
    plain = np.asarray(Image.open(kept["plain.png"]["mask"]), dtype=int)
    for rotated in ("exif6.jpg", "exif8.jpg"):  # masked as shown: the upright photo's mask
        assert (kept[rotated]["width"], kept[rotated]["height"]) == SIZE
        assert np.abs(np.asarray(Image.open(kept[rotated]["mask"]), dtype=int) - plain).max() <= 8
