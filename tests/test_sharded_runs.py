"""``mask``, ``generate`` and ``evaluate`` under ``torchrun --nproc_per_node 2`` (gloo, CPU), with tiny random models:

* two processes write byte for byte the files one process writes (batch size 1, one thread per process);
* a run whose process is killed (SIGKILL, by its pid) after the first item's record, restarted with the same
  command, ends with the same files as an uninterrupted run;
* a corrupt photo (or generated image) is reported, recorded with its reason and skipped; the rest is done.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sb_testkit.cli_runs import GENERATE_NAMES, child_env, command, folder_bytes, run_cli, write_generate_inputs
from sb_testkit.faults import recorded
from sb_testkit.images import object_on_background, rect_mask
from sb_testkit.sam import cached_checkpoint

from salient_background.models.runs.engine import PAUSE_ENV
from salient_background.models.runs.journal import RECORDS_FOLDER
from salient_background.models.runs.ranks import owner

_command, _env, _run, _files = command, child_env, run_cli, folder_bytes


def _kill_then_resume(args, out, kind: str) -> subprocess.CompletedProcess:
    """Start ``args`` on two processes, SIGKILL rank 1 once the first item's record exists, then rerun it."""
    counters = os.path.join(out, RECORDS_FOLDER, kind + ".progress")
    proc = subprocess.Popen(_command(args, 2), env=_env(**{PAUSE_ENV: "2"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # two processes load their models first (slow on a busy machine)
        while not (_done_records(out, kind) and os.path.isfile(os.path.join(counters, "rank1.json"))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        with open(os.path.join(counters, "rank1.json")) as fh:
            os.kill(json.load(fh)["pid"], signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode != 0  # the run was cut short: nothing merged yet
    assert _done_records(out, kind)
    return _run(args, 2)


def _done_records(out, kind: str) -> list[str]:
    """The keys of the records of items done (not failed, not being written) in the folder ``out``."""
    return [key for key, record in recorded(out, kind).items() if not {"failed", "started"} & set(record)]


def _both_ranks_work(keys) -> None:
    """The inputs were chosen so that each of the two processes owns some (the share is a hash of the key)."""
    assert {owner(k, 2) for k in keys} == {0, 1}, [owner(k, 2) for k in keys]


# ---------------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def generate_inputs(tiny_sd, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("gen")
    args = [*write_generate_inputs(root), "--pipeline", tiny_sd.hf_pipeline_dir]
    (root / "photos" / "broken.png").write_bytes(b"not an image")  # a corrupt photo
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "broken_mask.png")
    _both_ranks_work([n.replace("/", "__") for n in GENERATE_NAMES])
    one = _run([*args, "--output-dir", root / "one"])
    assert one.returncode == 1, one.stderr[-3000:]  # 1: the corrupt photo failed, the others were done
    return root, args


def test_generate_on_two_processes_writes_the_files_of_one(generate_inputs):
    root, args = generate_inputs
    two = _run([*args, "--output-dir", root / "two"], processes=2)
    assert "broken.png" in two.stderr and "cannot read" in two.stderr
    expected = _files(root / "one")
    assert len([n for n in expected if n.startswith("generated")]) == 10
    assert _files(root / "two") == expected  # no .records left either: merged and removed
    failed = json.loads((root / "one" / "manifest.json").read_text())["failed"]
    assert [(f["id"], "cannot read" in f["reason"]) for f in failed] == [("broken", True)]


def test_generate_killed_then_resumed_writes_the_files_of_an_uninterrupted_run(generate_inputs):
    root, args = generate_inputs
    resumed = _kill_then_resume([*args, "--output-dir", root / "killed"], root / "killed", "generate")
    assert re.search(r"[1-9]\d* already done", resumed.stdout), resumed.stdout + resumed.stderr[-3000:]
    assert _files(root / "killed") == _files(root / "one")
    # a rerun skips the recorded failure and says so; --retry-failed tries it again (it still fails)
    again = _run([*args, "--output-dir", root / "killed"])
    assert "nothing to do" in again.stdout and "skipped now as failed before" in again.stderr
    retried = _run([*args, "--output-dir", root / "killed", "--retry-failed"])
    assert retried.returncode == 1 and "ERROR skipped" in retried.stderr and "broken.png" in retried.stderr
    dry = _run([*args, "--output-dir", root / "killed", "--dry-run"])
    assert dry.returncode == 0 and "dry run: 6 photo(s); 0 to do (0 image(s)), 5 done, 1 failed before" in dry.stdout


# ---------------------------------------------------------------------------------------------- mask
MASK_NAMES = ["p0", "p1", "p2", "p3", "p4"]


@pytest.fixture(scope="module")
def mask_inputs(inspyrenet_fast_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("mask")
    (root / "photos").mkdir()
    for i, name in enumerate(MASK_NAMES):
        image, _ = object_on_background(40 + 8 * i, 56, seed=i)
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(root / "photos" / f"{name}.png")
    (root / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _both_ranks_work(MASK_NAMES)
    args = ["mask", root / "photos", "--checkpoint", inspyrenet_fast_checkpoint, "--mode", "fast", "--resize", "dynamic",
            "--no-progress"]
    one = _run([*args, "--output-dir", root / "one"])
    assert one.returncode == 1, one.stderr[-3000:]
    return root, args


def test_mask_on_two_processes_writes_the_files_of_one(mask_inputs):
    root, args = mask_inputs
    two = _run([*args, "--output-dir", root / "two"], processes=2)
    assert "broken.png" in two.stderr
    expected = _files(root / "one")
    assert len([n for n in expected if n.endswith("_mask.png")]) == 5
    assert _files(root / "two") == expected
    meta = json.loads((root / "one" / "mask_manifest.json").read_text())
    assert [r["id"] for r in meta["rows"]] == MASK_NAMES and meta["failed"][0]["id"] == "broken"


def test_mask_killed_then_resumed_writes_the_files_of_an_uninterrupted_run(mask_inputs):
    root, args = mask_inputs
    resumed = _kill_then_resume([*args, "--output-dir", root / "killed"], root / "killed", "mask")
    assert re.search(r"[1-9]\d* already done", resumed.stdout), resumed.stdout + resumed.stderr[-3000:]
    assert _files(root / "killed") == _files(root / "one")
    # settings are recorded per mask: other settings are refused, --overwrite redoes them
    binary = _run([*args, "--output-dir", root / "killed", "--binary"])
    assert binary.returncode == 2 and "other settings are there (binary;" in binary.stderr
    # under torchrun a photo that fails is no crash: every process exits 0 (no ChildFailedError traceback) and the
    # summary says what failed
    redone = _run([*args, "--output-dir", root / "killed", "--binary", "--overwrite"], processes=2)
    assert redone.returncode == 0 and "ChildFailedError" not in redone.stderr, redone.stderr[-3000:]
    assert "1 item(s) failed in this run; exit status 0 under torchrun" in redone.stderr
    assert json.loads((root / "killed" / "mask_manifest.json").read_text())["settings"]["binary"] is True
    assert set(np.unique(np.asarray(Image.open(root / "killed" / "p0_mask.png")))) <= {0, 255}


# ---------------------------------------------------------------------------------------------- evaluate
EVALUATE_NAMES = ["m0", "m1", "m2", "m3"]


@pytest.fixture(scope="module")
def evaluate_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "masks").mkdir()
    (root / "generated").mkdir()
    save = lambda t, p, mode: Image.fromarray((t.numpy() * 255).round().astype(np.uint8), mode=mode).save(p)  # noqa: E731
    for i, name in enumerate(EVALUATE_NAMES):
        image, disk = object_on_background(40, 56, seed=i)
        save(disk if i % 2 else rect_mask(40, 56, 8, 10, 30, 40), root / "masks" / f"{name}.png", "L")
        save(image, root / "generated" / f"{name}_s0.png", "RGB")
        save(image.flip(1), root / "generated" / f"{name}_s1.png", "RGB")
    (root / "generated" / "m0_s2.png").write_bytes(b"not an image")
    _both_ranks_work([f"{n}.png" for n in EVALUATE_NAMES])
    args = ["evaluate", "--masks", root / "masks", "--generated", root / "generated", "--sam", cached_checkpoint("tiny"),
            "--points", "4", "--no-progress"]
    one = _run([*args, "--output", root / "one"])
    assert one.returncode == 1, one.stderr[-3000:]
    return root, args


def test_evaluate_on_two_processes_writes_the_files_of_one(evaluate_inputs):
    root, args = evaluate_inputs
    two = _run([*args, "--output", root / "two"], processes=2)
    assert "m0_s2.png" in two.stderr
    expected = _results(root / "one")
    assert expected["expansion.csv"].count(b"\n") == 1 + 8 and b"seconds" not in expected["expansion.csv"]
    assert _results(root / "two") == expected  # byte for byte: the timings are apart, in timings.jsonl
    timed = [json.loads(line) for line in (root / "two" / "timings.jsonl").read_text().splitlines()]
    assert len(timed) == 8 and all(t["seconds"] >= 0 for t in timed)
    summary = json.loads((root / "one" / "summary.json").read_text())
    assert [os.path.basename(f["generated"]) for f in summary["failed"]] == ["m0_s2.png"]


def test_evaluate_killed_then_resumed_writes_the_files_of_an_uninterrupted_run(evaluate_inputs):
    root, args = evaluate_inputs
    resumed = _kill_then_resume([*args, "--output", root / "killed"], root / "killed", "evaluate")
    assert re.search(r"[1-9]\d* already scored", resumed.stdout), resumed.stdout + resumed.stderr[-3000:]
    assert _results(root / "killed") == _results(root / "one")


def _results(folder) -> dict:
    """The result files of an evaluation (all but the timing log)."""
    return {name: data for name, data in _files(folder).items() if name != "timings.jsonl"}


def test_an_explicit_device_under_several_processes_is_refused(tmp_path):
    from salient_background.models.errors import InputError
    from salient_background.models.runs.ranks import Ranks, device_name

    with pytest.raises(InputError, match="cannot be used with 2 processes"):
        device_name("cuda:0", Ranks(rank=1, world=2, local_rank=1))
    expected = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert device_name(None, Ranks(rank=1, world=2, local_rank=1)) == expected
    assert device_name("cpu", Ranks()) == "cpu"
