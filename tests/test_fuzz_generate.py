"""``generate`` over the hostile-input corpus (tests/sb_testkit/hostile_inputs.py) and a manifest whose paths and
ids try to leave their folders, in one run on the tiny models: each photo gives its images or fails alone with a
clear reason, EXIF-rotated photos follow their displayed orientation, and nothing is written outside --output-dir."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background import cli
from sb_testkit.hostile_inputs import displayed_pattern, tree_listing, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@pytest.fixture
def stub_salient(monkeypatch):
    """The salient model's stand-in: the mask is the framed photo's red channel (the pattern's top quarter)."""
    import salient_background.models.networks.salient as salient

    class Stub:
        def predict(self, images, **kw):
            return salient.SalientPrediction(maps=images[..., 0].float(), raw_max=torch.ones(images.shape[0]),
                                             empty=[False] * images.shape[0])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: Stub())


def _hostile_manifest(root):
    """jobs/jobs.csv naming a photo outside its folder (relative ``../``, absolute, through a symlink), with ids
    that would leave the output folder if used as paths."""
    outside = root / "outside"
    outside.mkdir()
    Image.fromarray(displayed_pattern()).save(outside / "photo.png")
    jobs = root / "jobs"
    jobs.mkdir()
    os.symlink(outside / "photo.png", jobs / "link.png")
    rows = [("../outside/photo.png", ""), (str(outside / "photo.png"), "../../escape"), ("link.png", "/abs/evil"),
            ("link.png", "a/b"), ("link.png", "..")]
    with open(jobs / "jobs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "id"])
        writer.writerows(rows)
    return jobs / "jobs.csv", len(rows)


def test_generate_over_the_corpus_and_a_hostile_manifest(tiny_sd, tmp_path, stub_salient, capsys):
    root = tmp_path / "tree"
    cases = write_corpus(root / "corpus")
    manifest, manifest_rows = _hostile_manifest(root)
    (root / "salient.pth").write_bytes(b"")  # named files must exist; the stub stands in for the model
    out = root / "out"
    before = tree_listing(tmp_path)
    code = cli.main(["generate", str(root / "corpus"), str(manifest), "--pipeline", tiny_sd.hf_pipeline_dir,
                     "--salient-checkpoint", str(root / "salient.pth"), "--prompt", "a table", "--output-dir", str(out),
                     "--size", "64", "--steps", "1", "--no-progress", "--device", "cpu"])
    assert code == 1  # some photos failed; the others finished
    assert "Traceback" not in capsys.readouterr().err
    written = tree_listing(tmp_path) - before
    assert written and all(p.startswith(os.path.join("tree", "out")) for p in written)
    for dirpath, dirnames, filenames in os.walk(out):
        assert all(len(os.fsencode(n)) <= 255 for n in dirnames + filenames)

    with open(out / "manifest.json", encoding="utf-8") as fh:
        result = json.load(fh)
    taken = [c for c in cases if c.name.lower().endswith(FOLDER_SUFFIXES)]
    failed = {os.path.basename(f["source"]): f["reason"] for f in result["failed"]}
    assert set(failed) == {c.name for c in taken if c.kind != "ok"}
    assert all(name in reason and "\n" not in reason for name, reason in failed.items())
    rows = {r["id"]: r for r in result["rows"]}
    assert len(rows) == sum(c.kind == "ok" for c in taken) + manifest_rows
    for item_id, row in rows.items():
        assert ".." not in item_id and "/" not in item_id and not item_id.startswith(".")
        for name in [row["mask"], row["original"], *row["generated"].split(";")]:
            assert os.path.isfile(out / name)
    # a phone photo stored on its side is framed as it is shown: its mask and input equal the upright photo's
    plain = np.asarray(Image.open(out / rows["plain"]["mask"]), dtype=int)
    for rotated in ("exif6", "exif8"):
        assert np.abs(np.asarray(Image.open(out / rows[rotated]["mask"]), dtype=int) - plain).max() <= 8, rotated
        assert Image.open(out / rows[rotated]["original"]).size == Image.open(out / rows["plain"]["original"]).size
    with open(out / "manifest.csv", "rb") as fh:  # a photo name that is not UTF-8 is kept as its own bytes
        assert b"caf\xe9_latin1.png" in fh.read()
