"""``evaluate --runs`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): the two processes share the measurements
and the main process writes byte for byte the table, CSV, JSON, contact sheet and reference features that one
process writes (metric batch 1, one thread per process)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sb_testkit.sam import cached_checkpoint

from salient_background import cli

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def two_runs(tiny_sd, tmp_path_factory):
    from sb_testkit.metric_models import write_metric_models

    root = tmp_path_factory.mktemp("table_sharded")
    write_metric_models(str(root / "models"))
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photos" / f"q{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[12:40, 14 + 3 * i:44] = 255
        Image.fromarray(mask).save(root / "masks" / f"q{i}_mask.png")
    common = ["generate", str(root / "photos"), "--masks", str(root / "masks"), "--prompt", "a swan", "--size", "64",
              "--steps", "2", "--num-images", "2", "--no-progress", "--device", "cpu"]
    assert cli.main([*common, "--si2", tiny_sd.si2_dir, "--controlnet-scale", "0", "--output-dir", str(root / "b")]) == 0
    assert cli.main([*common, "--pipeline", tiny_sd.hf_pipeline_dir, "--output-dir", str(root / "c")]) == 0
    return root


def _table(root, out, processes):
    args = ["evaluate", "--runs", f"si2={root / 'b'}", f"cn={root / 'c'}", "--output", str(out), "--sam",
            cached_checkpoint("tiny"), "--points", "4", "--models-dir", str(root / "models"), "--metrics",
            "expansion,fid,kid,lpips_diversity,clip_score", "--metric-batch", "1", "--bootstrap", "200",
            "--contact-sheet", "3", "--no-progress"]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    done = subprocess.run([sys.executable, *launcher, "-m", "salient_background", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _files(folder) -> dict:
    return {os.path.relpath(os.path.join(r, n), folder): open(os.path.join(r, n), "rb").read()
            for r, _, names in os.walk(folder) for n in names}


def test_two_processes_write_the_table_of_one(two_runs):
    _table(two_runs, two_runs / "one", 1)
    _table(two_runs, two_runs / "two", 2)
    one, two = _files(two_runs / "one"), _files(two_runs / "two")
    assert {"table.md", "table.csv", "table.json", "contact_sheet_cn.html", "contact_sheet_cn.png",
            "reference_features.npz"} <= set(one)
    assert sorted(one) == sorted(two)
    for name in sorted(one):
        assert one[name] == two[name], name
