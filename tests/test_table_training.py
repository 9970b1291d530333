"""``--validation-metrics`` and ``export --select-best`` (training/validation_metrics.py, training/export.py):

* a tiny training run holds the manifest's last rows out of training, renders the baseline once, and logs at each
  validation the held-out table (expansion, FID, CLIP score...) to validation.jsonl, equal to the table it writes;
* the records go to TensorBoard's scalars under validation_metrics/...;
* --select-best picks, among checkpoints still on disk, the lowest expansion whose FID stays within the margin.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sb_testkit.cli_runs import run_cli
from sb_testkit.diffusers_models import CONTROLNET_CONDITIONING_CHANNELS
from sb_testkit.sam import cached_checkpoint
from sb_testkit.training_runs import train_in_process
from test_training import RES, RESIZE, RedSegmenter, _config, make_photo_folder

from salient_background.models.errors import CheckpointError, InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    from sb_testkit.metric_models import write_metric_models

    root = tmp_path_factory.mktemp("metric_models")
    write_metric_models(str(root))
    return str(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from salient_background.training.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("train_data")
    make_photo_folder(str(root / "photos"), n=8)
    prepare_dataset(str(root / "dataset"), image_dirs=[str(root / "photos")], segmenter=RedSegmenter(), progress=False)
    return str(root / "dataset")


def _holdout_run_options(metric_models) -> dict:
    """A 4-step run validating at steps 2 and 4 on the manifest's last 2 rows (of 8)."""
    return dict(max_train_steps=4, validation_steps=2, checkpointing_steps=2, validation_rows=1,
                validation_inference_steps=2, learning_rate=1e-2, record_samples=True,
                validation_metrics="expansion,fid,clip_score,lpips_diversity", validation_holdout=2,
                validation_metric_seeds=2, validation_bootstrap=200, validation_models_dir=metric_models,
                validation_sam=cached_checkpoint("tiny"))


@pytest.fixture(scope="module")
def one_process_run(tiny_sd, dataset, metric_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process") / "run"
    train_in_process(_config(tiny_sd, dataset, out, **_holdout_run_options(metric_models)))
    return out


def _rows_trained_on(out, ranks: int) -> set:
    return {index for rank in range(ranks) for line in open(out / f"samples-rank{rank}.jsonl")
            for index in json.loads(line)["index"]}


def test_validation_metrics_hold_out_rows_and_log_the_table(one_process_run):
    out = one_process_run
    # the last 2 of the 8 rows are never trained on
    seen = _rows_trained_on(out, 1)
    assert seen <= set(range(6)) and len(seen) >= 2
    records = [json.loads(line) for line in open(out / "validation" / "validation.jsonl")]
    assert [r["step"] for r in records] == [2, 4]
    folder = out / "validation" / "metrics"
    assert sorted(os.listdir(folder / "baseline" / "generated")) == sorted(
        f"{name[:-4]}_s{seed}.png" for name in os.listdir(folder / "masks") for seed in (0, 1000))
    for record in records:
        metrics = record["metrics"]
        table = json.loads((folder / f"step-{record['step']:06d}" / "table" / "table.json").read_text())
        block = table["blocks"][0]
        assert metrics["inputs"] == block["inputs"] == 2
        assert metrics["controlnet"] == block["rows"][1]["values"] and metrics["baseline"] == block["rows"][0]["values"]
        assert set(metrics["controlnet"]) == {"expansion_relative", "fid", "clip_score", "lpips_diversity",
                                              "lpips_diversity_background"}
        assert metrics["expansion_ratio"]["value"] == pytest.approx(
            metrics["baseline"]["expansion_relative"] / metrics["controlnet"]["expansion_relative"], rel=1e-4)
    # the baseline is rendered once: the same numbers at every step
    assert records[0]["metrics"]["baseline"] == records[1]["metrics"]["baseline"]
    assert records[0]["metrics"]["controlnet"] != records[1]["metrics"]["controlnet"]  # the ControlNet trained on


def test_two_processes_validate_on_the_main_process_only_with_the_baseline_of_one(tiny_sd, dataset, metric_models,
                                                                                  one_process_run, tmp_path):
    """torchrun x2 (gloo), batch 1 each: the main process alone renders and measures (no metric waits for the other
    process, which waits at the next step), neither process trains on the held-out rows, and the baseline (rendered
    with the ControlNet switched off) is the one-process run's up to float rounding."""
    options = dict(_holdout_run_options(metric_models), data=dataset, base_model=tiny_sd.si2_dir, resolution=RES,
                   resize_to=RESIZE, conditioning_channels=CONTROLNET_CONDITIONING_CHANNELS, batch_size=1,
                   report_to="none", seed=0, output_dir=tmp_path / "two")
    flags = []
    for name, value in options.items():  # the train command's flags are the config's field names
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        else:
            flags += [flag, *value] if isinstance(value, (list, tuple)) else [flag, value]
    two = run_cli(["training", "train", *flags], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    out = tmp_path / "two"
    seen = _rows_trained_on(out, 2)
    assert seen <= set(range(6)) and len(seen) >= 2
    records = [json.loads(line) for line in open(out / "validation" / "validation.jsonl")]
    assert [r["step"] for r in records] == [2, 4]  # once per validation, not once per process
    alone = [json.loads(line) for line in open(one_process_run / "validation" / "validation.jsonl")]
    # equal up to float rounding: measured, 1 of the 49,152 8-bit values of 4 images one level apart
    baseline = os.path.join("validation", "metrics", "baseline", "generated")
    names = sorted(os.listdir(one_process_run / baseline))
    assert sorted(os.listdir(out / baseline)) == names and len(names) == 4
    differences = np.concatenate([np.abs(_pixels(out / baseline / n) - _pixels(one_process_run / baseline / n)).ravel()
                                  for n in names])
    assert differences.max() <= 1 and np.count_nonzero(differences) <= 10
    mine, theirs = records[0]["metrics"]["baseline"], alone[0]["metrics"]["baseline"]
    assert mine.keys() == theirs.keys() and all(mine[k] == pytest.approx(theirs[k], rel=1e-3) for k in mine)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_validation_metrics_go_to_tensorboard_scalars():
    from salient_background.training.validation_metrics import log_to_tensorboard

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    class Tracker:
        name = "tensorboard"
        writer = Writer()

    class Accelerator:
        trackers = [Tracker()]

    metrics = {"baseline": {"fid": 30.0, "expansion_relative": 0.4}, "controlnet": {"fid": 31.0, "clip_score": None},
               "expansion_ratio": {"value": 3.6, "low": 2.0, "high": 5.0}}
    log_to_tensorboard(Accelerator(), metrics, 7)
    assert sorted(Tracker.writer.scalars) == [
        ("validation_metrics/expansion_ratio", 3.6, 7), ("validation_metrics/expansion_relative/baseline", 0.4, 7),
        ("validation_metrics/fid/baseline", 30.0, 7), ("validation_metrics/fid/controlnet", 31.0, 7)]


def test_holdout_needs_validation_steps_and_enough_rows(tiny_sd, dataset, tmp_path):
    from salient_background.training.validation_metrics import split_holdout

    rows = list(range(8))
    config = _config(tiny_sd, dataset, tmp_path, validation_metrics="all", validation_steps=2, validation_holdout=3)
    assert split_holdout(config, rows) == ([0, 1, 2, 3, 4], [5, 6, 7])
    assert split_holdout(_config(tiny_sd, dataset, tmp_path), rows) == (rows, [])
    with pytest.raises(InputError, match="--validation-steps"):
        split_holdout(_config(tiny_sd, dataset, tmp_path, validation_metrics="all"), rows)
    with pytest.raises(InputError, match="leave at least a batch"):
        split_holdout(_config(tiny_sd, dataset, tmp_path, validation_metrics="all", validation_steps=2,
                              validation_holdout=7), rows)


def _fake_run(root, steps_on_disk, records):
    from salient_background.training.checkpoints import TRAIN_STATE

    for step in steps_on_disk:
        folder = root / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / TRAIN_STATE).write_text(json.dumps({"global_step": step}))
    (root / "validation").mkdir(parents=True)
    with open(root / "validation" / "validation.jsonl", "w") as fh:
        for step, fid, expansion in records:
            fh.write(json.dumps({"step": step, "metrics": {"baseline": {"fid": 10.0, "expansion_relative": 0.5},
                                                           "controlnet": {"fid": fid, "expansion_relative": expansion}}})
                     + "\n")
        fh.write('{"step": 99, "metr')  # a line cut short by a kill is ignored


def test_select_best_is_the_lowest_expansion_within_the_fid_margin(tmp_path):
    from salient_background.training.export import select_best_checkpoint

    # step 8 has the lowest expansion of all but its checkpoint was deleted (checkpoints_total_limit)
    _fake_run(tmp_path, [2, 4, 6], [(2, 10.0, 0.30), (4, 12.0, 0.10), (6, 10.4, 0.20), (8, 9.0, 0.01)])
    pick = lambda margin: os.path.basename(select_best_checkpoint(str(tmp_path), margin)[0])  # noqa: E731
    assert pick(0.05) == "checkpoint-6"  # FID limit 10.5: steps 2 and 6; 6 expands less
    assert pick(0.25) == "checkpoint-4"  # limit 12.5: all three; 4 expands least
    assert pick(0.0) == "checkpoint-2"  # limit 10: only step 2
    _, choice = select_best_checkpoint(str(tmp_path), 0.05)
    assert choice["fid_limit"] == pytest.approx(10.5) and [c["step"] for c in choice["candidates"]] == [2, 4, 6]


def test_select_best_says_what_it_needs(tmp_path):
    from salient_background.training.export import select_best_checkpoint

    with pytest.raises(CheckpointError, match="train with --validation-metrics"):
        select_best_checkpoint(str(tmp_path))
    _fake_run(tmp_path / "run", [2], [(2, 30.0, 0.1)])
    with pytest.raises(CheckpointError, match="no checkpoint keeps FID within 5 %"):
        select_best_checkpoint(str(tmp_path / "run"), 0.05)
