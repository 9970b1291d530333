"""``evaluate --runs``: the comparison table end to end on tiny random models. A baseline run (``generate
--controlnet-scale 0``) and a ControlNet run over six photos with categories (3 animal, 2 vehicle, 1 none) give:

* table.md / table.csv / table.json with one block per category and known input counts, whose expansion means and
  ratio equal the ``evaluate --manifest`` scores of the same images (an independent path), and whose FID equals a
  numpy Fréchet distance of the cached Inception features;
* a contact sheet whose first row is the input with the largest expansion drop, linking files that exist;
* a resumed table (measurements deleted or cut short, as by a kill) byte-equal to the uninterrupted one, redoing only
  what is missing; another reference set measures only its own photos;
* a missing metric model leaves that metric out with its download command, or stops the run when asked for.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from sb_testkit.sam import cached_checkpoint

from salient_background import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORIES = ["animal", "animal", "vehicle", "animal", "vehicle", ""]


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    from sb_testkit.metric_models import write_metric_models

    root = tmp_path_factory.mktemp("metric_models")
    write_metric_models(str(root))
    return str(root)


@pytest.fixture(scope="module")
def runs(tiny_sd, tmp_path_factory):
    """inputs.csv (image, prompt, category) of six photos; base/ (scale 0) and cn/ generated from it, 2 seeds each."""
    root = tmp_path_factory.mktemp("table")
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,prompt,category"]
    for i, category in enumerate(CATEGORIES):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photos" / f"p{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[16:34 + 2 * i, 20:44] = 255
        Image.fromarray(mask).save(root / "masks" / f"p{i}_mask.png")
        lines.append(f"photos/p{i}.png,a photo of thing {i},{category}")
    (root / "inputs.csv").write_text("\n".join(lines) + "\n")
    common = ["generate", root / "inputs.csv", "--masks", root / "masks", "--size", "64", "--steps", "2",
              "--num-images", "2", "--no-progress", "--device", "cpu"]
    assert cli.main([*map(str, common), "--si2", tiny_sd.si2_dir, "--controlnet-scale", "0", "--output-dir",
                     str(root / "base")]) == 0
    assert cli.main([*map(str, common), "--pipeline", tiny_sd.hf_pipeline_dir, "--output-dir", str(root / "cn")]) == 0
    return root


def _table_args(root, out, metric_models, *extra):
    return ["evaluate", "--runs", f"si2={root / 'base'}", f"cn={root / 'cn'}", "--output", str(out), "--sam",
            cached_checkpoint("tiny"), "--points", "4", "--categories", str(root / "inputs.csv"), "--models-dir",
            metric_models, "--bootstrap", "300", "--contact-sheet", "4", "--device", "cpu", "--no-progress",
            *map(str, extra)]


@pytest.fixture(scope="module")
def table(runs, metric_models):
    out = runs / "table"
    assert cli.main(_table_args(runs, out, metric_models)) == 0
    return out


def _expansion_by_image(root, run, tmp) -> dict:
    """{generated file name: expansion_relative} from the evaluate command on the run's manifest."""
    out = tmp / f"expansion_{run}"
    assert cli.main(["evaluate", "--manifest", str(root / run / "manifest.csv"), "--sam", cached_checkpoint("tiny"),
                     "--points", "4", "--output", str(out), "--no-progress", "--device", "cpu"]) == 0
    with open(out / "expansion.csv") as fh:
        return {os.path.basename(r["generated"]): float(r["expansion_relative"]) for r in csv.DictReader(fh)}


def _per_input(by_image: dict) -> dict:
    grouped = {}
    for name, value in by_image.items():
        grouped.setdefault(name.rsplit("_s", 1)[0], []).append(value)
    return {k: float(np.mean(v)) for k, v in grouped.items()}


def test_table_blocks_values_and_statistics(runs, table, tmp_path):
    result = json.loads((table / "table.json").read_text())
    assert result["baseline"] == "si2" and result["runs"] == ["si2", "cn"]
    assert [(b["dataset"], b["category"], b["inputs"]) for b in result["blocks"]] == [
        ("all", "all", 6), ("all", "animal", 3), ("all", "vehicle", 2)]
    assert [m["name"] for m in result["metrics"]] == ["expansion_relative", "fid", "kid", "clip_score",
                                                      "lpips_diversity_background", "lpips_diversity",
                                                      "object_similarity"]
    assert [r["images"] for r in result["blocks"][1]["rows"]] == [6, 6]
    base, cn = (_per_input(_expansion_by_image(runs, run, tmp_path)) for run in ("base", "cn"))
    members = {"all": [f"p{i}" for i in range(6)], "animal": ["p0", "p1", "p3"], "vehicle": ["p2", "p4"]}
    for block in result["blocks"]:
        ids = members[block["category"]]
        mean_b, mean_c = np.mean([base[i] for i in ids]), np.mean([cn[i] for i in ids])
        si2_row, cn_row = block["rows"]
        assert si2_row["values"]["expansion_relative"] == pytest.approx(mean_b, rel=1e-5)
        assert cn_row["values"]["expansion_relative"] == pytest.approx(mean_c, rel=1e-5)
        comparison = block["comparisons"][0]
        ratio = comparison["expansion_ratio"]
        assert ratio["value"] == pytest.approx(mean_b / mean_c, rel=1e-5) and ratio["low"] <= ratio["value"] <= ratio["high"]
        diff = comparison["differences"]["expansion_relative"]
        assert diff["value"] == pytest.approx(mean_c - mean_b, rel=1e-4, abs=1e-7)
        assert diff["moved"] == (not diff["low"] <= 0 <= diff["high"])
        for name, d in comparison["differences"].items():
            assert d["low"] <= d["value"] <= d["high"] or name in ("fid", "kid"), (name, d)
    with open(table / "table.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["category"], r["run"]) for r in rows] == [("all", "si2"), ("all", "cn"), ("animal", "si2"),
                                                         ("animal", "cn"), ("vehicle", "si2"), ("vehicle", "cn")]
    assert float(rows[1]["expansion_ratio"]) == result["blocks"][0]["comparisons"][0]["expansion_ratio"]["value"]
    md = (table / "table.md").read_text()
    assert "## all / animal (3 inputs)" in md and "| cn | 12 |" in md and "300 resamples, seed 0" in md


def test_table_fid_equals_an_independent_frechet_distance(runs, table, metric_models):
    """The FID of each run (torchmetrics) equals the Fréchet distance computed with numpy from its images' cached
    Inception features and the reference features the table wrote; a cached feature equals the Inception run on its
    image now."""
    from salient_background.commands.evaluate_inputs import load_image, load_mask
    from salient_background.models.scoring.comparison import stats
    from salient_background.models.scoring.comparison.cache import MeasurementCache
    from salient_background.models.scoring.comparison.measure import Digests, unit_key
    from salient_background.models.scoring.comparison.parts import InceptionPart, Readers
    from salient_background.models.scoring.comparison.runs import image_jobs, read_runs
    from salient_background.models.scoring.metrics import load_inception

    inception = load_inception(os.path.join(metric_models, "metrics", "pt_inception-2015-12-05-6726825d.pth"))
    part = InceptionPart(inception, Readers(load_image, load_mask))
    reference = np.load(table / "reference_features.npz")["inception"]
    assert len(reference) == len(os.listdir(runs / "base" / "inputs")) == 6
    mu_r, sigma_r = reference.mean(0), np.cov(reference, rowvar=False)
    cache, digest = MeasurementCache(str(table / "cache")), Digests()
    jobs = image_jobs(read_runs([f"si2={runs / 'base'}", f"cn={runs / 'cn'}"]), [f"p{i}" for i in range(6)])
    result = json.loads((table / "table.json").read_text())
    for run, row in zip(("si2", "cn"), result["blocks"][0]["rows"]):
        mine = [j for j in jobs if j.run == run]
        x = np.stack([cache.get("inception", unit_key(part, [j], digest)).features["inception"] for j in mine])
        x = x.astype(np.float64)
        # numpy's Gram form (checked against scipy's sqrtm in test_table_stats.py; sqrtm of 2048 x 2048 is slow)
        assert row["values"]["fid"] == pytest.approx(stats.weighted_fid(x, np.ones(len(x)), mu_r, sigma_r), rel=1e-3)
    fresh = inception([load_image(jobs[0].image)])[0].numpy()
    assert np.allclose(cache.get("inception", unit_key(part, [jobs[0]], digest)).features["inception"], fresh,
                       rtol=1e-5, atol=1e-6)


def test_contact_sheet_shows_the_largest_expansion_drop_first(runs, table, tmp_path):
    from salient_background.models.scoring.comparison.contact_sheet import LINE_PX, TEXT_LINES, THUMB

    base = _expansion_by_image(runs, "base", tmp_path)
    cn = _expansion_by_image(runs, "cn", tmp_path)
    drops = sorted(((base[f"p{i}_s0.png"] - cn[f"p{i}_s0.png"], f"p{i}") for i in range(6)), reverse=True)
    page = (table / "contact_sheet_cn.html").read_text()
    links = [part.split('"')[0] for part in page.split('href="')[1:]]
    assert len(links) == 12 and all(os.path.isfile(table / link) for link in links)
    assert links[:3] == [f"../base/inputs/{drops[0][1]}.png", f"../base/generated/{drops[0][1]}_s0.png",
                         f"../cn/generated/{drops[0][1]}_s0.png"]
    sheet = Image.open(table / "contact_sheet_cn.png")
    assert sheet.size == (3 * THUMB + 8, 4 * (THUMB + TEXT_LINES * LINE_PX + 6) + LINE_PX + 4)


def test_resumed_table_equals_the_uninterrupted_one(runs, table, metric_models, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(table / "cache", cache)
    files = sorted(p for p in cache.rglob("*.npz"))
    dropped, cut = files[::2], files[1]
    for path in dropped:
        path.unlink()
    cut.write_bytes(cut.read_bytes()[:40])  # a measurement cut short: measured again
    kept = {p: p.stat().st_mtime_ns for p in files if p not in dropped and p != cut}
    out = tmp_path / "resumed"
    assert cli.main(_table_args(runs, out, metric_models, "--cache", cache)) == 0
    for name in ("table.md", "table.csv", "table.json"):
        expected = (table / name).read_bytes()
        if name == "table.json":  # the settings name the cache folder nowhere; the bytes must agree
            assert json.loads((out / name).read_text()) == json.loads(expected)
        assert (out / name).read_bytes() == expected, name
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished measurements untouched
    assert all(p.is_file() for p in dropped) and np.load(cut) is not None

    # another reference set: only its photos are measured (one new Inception feature each)
    before = set(cache.rglob("*.npz"))
    other = tmp_path / "other_reference"
    other.mkdir()
    for photo in sorted((runs / "photos").iterdir()):  # other pictures than the runs' inputs
        Image.open(photo).transpose(Image.FLIP_TOP_BOTTOM).save(other / photo.name)
    assert cli.main(_table_args(runs, tmp_path / "other", metric_models, "--cache", cache, "--reference", other)) == 0
    new = set(cache.rglob("*.npz")) - before
    assert len(new) == 6 and all(p.parent.parent.name == "inception" for p in new)
    # the features of a table given back as the reference give its FID again, measuring nothing
    assert cli.main(_table_args(runs, tmp_path / "again", metric_models, "--cache", cache, "--reference",
                                table / "reference_features.npz")) == 0
    assert set(cache.rglob("*.npz")) == before | new
    first, again = (json.loads((d / "table.json").read_text())["blocks"][0]["rows"] for d in (table, tmp_path / "again"))
    assert [r["values"]["fid"] for r in first] == [r["values"]["fid"] for r in again]


def test_a_missing_metric_model_is_left_out_or_refused(runs, table, metric_models, tmp_path, capsys):
    partial = tmp_path / "models"
    shutil.copytree(metric_models, partial, ignore=shutil.ignore_patterns("clip-vit-large-patch14"))
    shutil.copytree(table / "cache", tmp_path / "c")  # measured already: only the table is made
    out = tmp_path / "t"
    assert cli.main(_table_args(runs, out, str(partial), "--cache", tmp_path / "c", "--metrics",
                                "expansion,clip_score")) == 2
    assert "download metrics-clip" in capsys.readouterr().err
    assert cli.main(_table_args(runs, out, str(partial), "--cache", tmp_path / "c", "--bootstrap", "50")) == 0
    err = capsys.readouterr().err
    assert "left out: clip_score" in err and "download metrics-clip" in err
    names = [m["name"] for m in json.loads((out / "table.json").read_text())["metrics"]]
    assert "clip_score" not in names and "fid" in names and "expansion_relative" in names


def test_bad_runs_are_clear_errors(runs, metric_models, tmp_path, capsys):
    assert cli.main(["evaluate", "--runs", str(runs / "base"), "--output", str(tmp_path / "t")]) == 2
    assert "--sam" in capsys.readouterr().err  # every metric asked for by default; none can run without models
    assert cli.main(["evaluate", "--runs", str(runs / "base"), str(tmp_path), "--output", str(tmp_path / "t")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert cli.main(["evaluate", "--runs", f"a={runs / 'base'}", f"a={runs / 'cn'}", "--output", str(tmp_path)]) == 2
    assert "share a name" in capsys.readouterr().err
    assert cli.main(["evaluate", "--runs", str(runs / "base"), "--masks", str(runs / "masks"), "--output",
                     str(tmp_path / "t")]) == 2
    assert "--runs" in capsys.readouterr().err
    assert cli.main(_table_args(runs, tmp_path / "t", metric_models, "--metrics", "fid,sharpness")) == 2
    assert "unknown sharpness" in capsys.readouterr().err
