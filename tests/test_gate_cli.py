"""``generate`` with the quality gate, through the real command line on tiny random models (SD2 + salient
ControlNet, and the baseline without it) and the tiny SAM: what is written and recorded, a rerun that redoes
nothing, a run killed mid-photo (SIGKILL after its first round) resumed without re-generating the candidates
already scored, and two processes (torchrun, gloo) writing the bytes of one.

Which candidate a gate *should* keep is tested on drawn shapes in test_gate.py; here SAM has random weights, so the
test reads the scores the run recorded and checks the files and the manifest against them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from sb_testkit.cli_runs import child_env, command, file_states, folder_bytes, run_cli
from sb_testkit.progress import record_bars
from sb_testkit.sam import cached_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAMES = ["a", "cat", "dog"]


@pytest.fixture(scope="module")
def inputs(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("gate_cli")
    rng = np.random.default_rng(1)
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photos" / f"{name}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[12:44, 20:40] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
    args = ["generate", root / "photos", "--pipeline", tiny_sd.hf_pipeline_dir, "--masks", root / "masks",
            "--prompt", "a swan", "--size", "64", "--steps", "2", "--no-progress", "--candidates", "2",
            "--max-expansion", "0", "--max-tries", "2", "--gate-sam", cached_checkpoint("tiny")]
    one = run_cli([*args, "--output-dir", root / "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    return root, args, one


def _without(args: list, *options: str) -> list:
    """``args`` without each of ``options`` and its value."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif str(a) in options:
            skip = True
        else:
            out.append(a)
    return out


def _manifest(folder) -> dict:
    return {row["id"]: row for row in json.loads((folder / "manifest.json").read_text())["rows"]}


def _array(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_each_row_keeps_its_least_expanded_candidate_and_records_every_attempt(inputs):
    root, _, one = inputs
    rows = _manifest(root / "one")
    assert sorted(rows) == NAMES
    statuses = []
    for name, row in rows.items():
        record = row["gate"]
        attempts = record["attempts"]
        statuses.append(record["status"])
        assert record["policy"] == {"candidates": 2, "keep": 1, "max_expansion": 0.0, "max_tries": 2}
        # round 0 = seeds 0, 1; a second round (2, 3) only when neither passed (expansion <= 0)
        passed_first = any(a["expansion_relative"] == 0 for a in attempts[:2])
        assert [a["seed"] for a in attempts] == ([0, 1] if passed_first else [0, 1, 2, 3])
        assert record["rounds"] == len(attempts) // 2
        best = min(attempts, key=lambda a: (a["expansion_relative"], -a["iou"], a["attempt"]))
        assert record["kept_seeds"] == [best["seed"]] and [a["kept"] for a in attempts].count(True) == 1
        assert record["status"] == ("passed" if best["expansion_relative"] == 0 else "gate_failed")
        assert [im["seed"] for im in row["images"]] == [best["seed"]]
        kept = root / "one" / row["images"][0]["generated"]
        assert kept.name == f"{name}_s{best['seed']}.png"
        for a in attempts:  # every candidate is on disk; the kept one is the generated image
            candidate = root / "one" / "candidates" / f"{name}_s{a['seed']}.png"
            assert candidate.is_file()
        assert np.array_equal(_array(kept), _array(root / "one" / "candidates" / f"{name}_s{best['seed']}.png"))
    assert sorted(os.listdir(root / "one" / "generated")) == sorted(
        f"{n}_s{rows[n]['gate']['kept_seeds'][0]}.png" for n in NAMES)
    counts = (f"{len(NAMES)} item(s), {statuses.count('passed')} passed, {statuses.count('gate_failed')} gate_failed")
    assert counts in one.stdout, one.stdout


def test_a_rerun_redoes_nothing(inputs):
    root, args, _ = inputs
    before = file_states(root / "one")
    again = run_cli([*args, "--output-dir", root / "one"])
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr[-2000:]
    assert file_states(root / "one") == before


def test_the_gate_needs_its_sam_and_keep_replaces_num_images(inputs, tmp_path, capsys):
    from salient_background import cli

    root, args, _ = inputs
    no_sam = _without(args, "--gate-sam")
    for extra, words in (([], "--gate-sam"), (["--gate-sam", tmp_path / "none.pth"], "is not a file"),
                         (["--num-images", "2"], "--keep K"), (["--keep", "3"], "--keep must be between 1 and --candidates (2)")):
        given = no_sam if extra[:1] == ["--gate-sam"] or not extra else args
        assert cli.main([*map(str, given), *map(str, extra), "--output-dir", str(tmp_path / "x")]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_a_photo_with_an_empty_mask_is_reported_and_skipped(inputs, tmp_path, capsys):
    from salient_background import cli

    root, args, _ = inputs
    for name in ("blank", "fine"):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / f"{name}.png")
    mask = np.zeros((64, 64), np.uint8)
    Image.fromarray(mask).save(tmp_path / "blank_mask.png")
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "fine_mask.png")
    given = _without(args, "--masks")
    given[1] = tmp_path
    assert cli.main([*map(str, given), "--masks", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 1
    assert "the object mask is empty" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [row["id"] for row in manifest["rows"]] == ["fine"]
    assert [f["id"] for f in manifest["failed"]] == ["blank"]


def test_the_baseline_without_controlnet_is_gated_too(inputs, tiny_sd, tmp_path):
    root, args, _ = inputs
    baseline = _without(args, "--pipeline", "--max-expansion", "--max-tries")
    result = run_cli([*baseline, "--base-model", tiny_sd.si2_dir, "--controlnet-scale", "0", "--keep", "2",
                      "--output-dir", tmp_path / "base"])
    assert result.returncode == 0, result.stderr[-3000:]
    for row in _manifest(tmp_path / "base").values():
        assert len(row["images"]) == 2 and row["gate"]["status"] == "ungated" and row["gate"]["rounds"] == 1
        assert row["gate"]["kept_seeds"] == [a["seed"] for a in sorted(
            row["gate"]["attempts"], key=lambda a: (a["expansion_relative"], -a["iou"], a["attempt"]))]
        assert row["settings"]["controlnet"] is None


def test_two_processes_write_the_bytes_of_one(inputs):
    root, args, _ = inputs
    two = run_cli([*args, "--output-dir", root / "two"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert folder_bytes(root / "two") == folder_bytes(root / "one")


def test_killed_after_a_round_resumes_without_regenerating_its_candidates(inputs):
    root, args, _ = inputs
    out = root / "killed"
    record = out / "candidates" / "a.gate.json"
    proc = subprocess.Popen(command([*args, "--output-dir", out, "--max-tries", "2"]), env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not record.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    recorded = json.loads(record.read_text())["attempts"]
    scored = {f"candidates/a_s{a['seed']}.png" for a in recorded}
    kept_states = {k: v for k, v in file_states(out, under=("candidates",)).items() if k in scored}
    resumed = run_cli([*args, "--output-dir", out])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"a: resuming the quality gate after {len(recorded)} recorded candidate(s)" in resumed.stderr
    after = file_states(out, under=("candidates",))
    assert {k: after[k] for k in kept_states} == kept_states  # not generated again: same inode, mtime, bytes
    assert folder_bytes(out) == folder_bytes(root / "one")


def test_the_bar_counts_every_candidate_step_and_a_resumed_run_ends_full(inputs, tmp_path, monkeypatch):
    """The bar plans each row's first round (--candidates images, not --keep) and grows when a row needs another
    round; a run resuming recorded rounds counts them at once. Either way it ends exactly full, at the steps of
    the candidates the gate made (counted from the files)."""
    import shutil

    from salient_background import cli

    bars = record_bars(monkeypatch)
    root, args, _ = inputs
    steps, candidates = 2, 2
    args = [str(a) for a in args]  # --no-progress: our bar is still made (disabled), the libraries' are not
    fresh = tmp_path / "fresh"
    assert cli.main([*args, "--output-dir", str(fresh)]) == 0
    made = len([p for p in os.listdir(fresh / "candidates") if p.endswith(".png")])
    assert made > len(NAMES) * candidates  # the inputs make some row run a second round
    (bar,) = bars
    assert bar.planned == len(NAMES) * candidates * steps and bar.n == bar.total == made * steps

    resumed = tmp_path / "resumed"  # every round recorded already (a stopped run's candidates folder)
    shutil.copytree(fresh / "candidates", resumed / "candidates")
    bars.clear()
    assert cli.main([*args, "--output-dir", str(resumed)]) == 0
    (bar,) = bars
    assert bar.n == bar.total == made * steps
    assert folder_bytes(resumed) == folder_bytes(fresh)
