"""``evaluate`` over the hostile-input corpus (tests/sb_testkit/hostile_inputs.py) as generated images and masks,
from a manifest whose paths leave its folder and whose ids are hostile, in one run on the tiny SAM: each row is
scored or fails alone with a clear reason, nothing is written outside --output, and a rerun redoes nothing."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from salient_background.cli import main
from sb_testkit.hostile_inputs import SIZE, displayed_pattern, tree_listing, write_corpus
from sb_testkit.sam import cached_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _manifest(root, cases):
    """jobs/eval.csv: every corpus file as a generated image against the upright mask; the phone photos also as
    masks; a generated image outside the manifest's folder (``../``, absolute, a symlink); ids that are paths."""
    jobs, outside = root / "jobs", root / "outside"
    jobs.mkdir()
    outside.mkdir()
    Image.fromarray(displayed_pattern()[..., 0]).save(jobs / "upright_mask.png")
    for k in (1, 2, 3):  # evaluate scores a generated image once: one file per row
        Image.fromarray(displayed_pattern()).save(outside / f"photo{k}.png")
        Image.fromarray(displayed_pattern()).save(jobs / f"upright{k}.png")
    os.symlink(outside / "photo3.png", jobs / "link.png")
    corpus = os.path.join("..", "corpus")
    rows = [(f"../../up{k}", "upright_mask.png", os.path.join(corpus, c.name)) for k, c in enumerate(cases)]
    rows += [("/abs/rot6", os.path.join(corpus, "exif6.jpg"), "upright1.png"),
             ("rot8", os.path.join(corpus, "exif8.jpg"), "upright2.png"),
             ("out1", "upright_mask.png", "../outside/photo1.png"),
             ("out2", "upright_mask.png", str(outside / "photo2.png")),
             ("out3", "upright_mask.png", "link.png")]
    with open(jobs / "eval.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "mask", "generated"])
        writer.writerows(rows)
    return jobs / "eval.csv"


def _evaluate(manifest, out):
    return main(["evaluate", "--manifest", str(manifest), "--sam", cached_checkpoint("tiny"), "--output", str(out),
                 "--points", "2", "--no-progress", "--device", "cpu"])


def test_evaluate_over_the_corpus_from_a_hostile_manifest(tmp_path, capsys):
    root = tmp_path / "tree"
    cases = write_corpus(root / "corpus")
    manifest = _manifest(root, cases)
    out = root / "out"
    before = tree_listing(tmp_path)
    assert _evaluate(manifest, out) == 1  # some rows failed; the others were scored
    assert "Traceback" not in capsys.readouterr().err
    written = tree_listing(tmp_path) - before
    assert written and all(p.startswith(os.path.join("tree", "out")) for p in written)

    with open(out / "expansion.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        scored = {os.path.basename(r["generated"]) if r["id"].startswith("../../up") else r["id"]: r
                  for r in csv.DictReader(fh)}
    with open(out / "summary.json", encoding="utf-8") as fh:
        failed = {os.path.basename(f["generated"]): f["reason"] for f in json.load(fh)["failed"]}
    upright_size = [c.name for c in cases if c.kind == "ok" and c.size == SIZE]
    assert set(scored) == set(upright_size) | {"/abs/rot6", "rot8", "out1", "out2", "out3"}
    # the rest fails alone: unreadable, bombs, and pictures of another size than the mask
    assert set(failed) == {c.name for c in cases if c.name not in upright_size}
    assert all(name in reason and "\n" not in reason for name, reason in failed.items()
               if next(c for c in cases if c.name == name).kind != "ok")
    # phone photos are scored as shown: the same numbers as the upright picture's
    reference = scored["plain.png"]
    for name in ("exif6.jpg", "exif8.jpg", "/abs/rot6", "rot8"):
        assert (scored[name]["width"], scored[name]["height"]) == (str(SIZE[0]), str(SIZE[1])), name
        assert abs(float(scored[name]["iou"]) - float(reference["iou"])) < 0.05, name

    # a rerun finds every row (the non-UTF-8 name too) done or failed before: nothing is scored again
    assert _evaluate(manifest, out) == 0
    assert "0 scored" in capsys.readouterr().out
