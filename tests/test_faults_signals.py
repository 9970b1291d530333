"""Signals a batch system sends (``mask`` with the free stand-in model, in a child process): SIGTERM before a
pre-emption ends the run cleanly with the resumable status 130; SIGKILL at random moments (during start-up, the
items, the merge) never leaves a partial file presented as done, and the same command afterwards ends with the
files of an undisturbed run without redoing a finished item.

``SB_FAULT_KILL_TRIALS`` sets the number of kills (default 6: two rounds of three kills in a row, each round
then completed by a rerun); ``SB_FAULT_SEED`` the random moments (printed on failure)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

from salient_background.models.runs.engine import PAUSE_ENV
from sb_testkit.faults import (check_presented_files, fault_env, final_files, mask_command, recorded, run_mask, run_pids,
                               write_photos)

PHOTOS = 10


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_signals")
    write_photos(root / "photos", PHOTOS, size=(16, 12), seed=5)
    reference = run_mask(root / "photos", root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root / "photos", final_files(root / "reference")


KILL_PAUSE = 0.1  # seconds after each item's record (the kills are placed between and inside items)


def _start(photos_dir, out, pause: float) -> subprocess.Popen:
    return subprocess.Popen(mask_command(photos_dir, out), env=fault_env(**{PAUSE_ENV: str(pause)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _records(out) -> list[str]:
    return sorted(recorded(out))


def _done(out) -> int:
    """Items finished: unmerged records plus the merged manifest's rows."""
    merged = 0
    if (out / "mask_manifest.json").exists():
        merged = len(json.loads((out / "mask_manifest.json").read_text())["rows"])
    return len(_records(out)) + merged


def _progress(out) -> str:
    """How far a killed run got: its unmerged records, or the rows of the manifest it merged."""
    if (out / "mask_manifest.json").exists():
        return f"merged {len(json.loads((out / 'mask_manifest.json').read_text())['rows'])}"
    return f"{len(_records(out))} recorded"


def _finished(out, ids) -> dict:
    return {n: os.stat(out / n).st_mtime_ns for i in ids for n in (f"{i}_mask.png", f"{i}_cutout.png")}


def test_sigterm_before_preemption_ends_the_run_resumably(photos, tmp_path):
    photos_dir, reference = photos
    out = tmp_path / "out"
    proc = _start(photos_dir, out, pause=0.4)
    deadline = time.monotonic() + 240
    while len(_records(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what a scheduler sends before it pre-empts the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted; rerun the same command to resume" in err
    assert not [n for n in os.listdir(out) if ".sbtmp." in n]
    _stopped_part_way_then_resumed(photos_dir, out, reference)


def _stopped_part_way_then_resumed(photos_dir, out, reference) -> None:
    """A run stopped part way (the item in hand finished and recorded, or left undone: no more) leaves only whole
    files; the same command does the rest without touching the finished ones and ends with the undisturbed files."""
    finished = _records(out)
    assert 2 <= len(finished) < PHOTOS, finished
    check_presented_files(out)
    kept = _finished(out, finished)
    rerun = run_mask(photos_dir, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"mask: {PHOTOS - len(finished)} done, {len(finished)} already done, 0 failed" in rerun.stdout
    assert _finished(out, finished) == kept
    assert final_files(out) == reference


def test_sigkill_at_random_moments_loses_nothing(photos, tmp_path):
    photos_dir, reference = photos
    trials = int(os.environ.get("SB_FAULT_KILL_TRIALS", "6"))
    seed = int(os.environ.get("SB_FAULT_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    kills = []  # (round, items done before, kill after this many, + seconds, state after the kill)
    for round_start in range(0, trials, 3):
        out = tmp_path / f"round{round_start // 3}"
        for _ in range(min(3, trials - round_start)):
            before = _done(out)
            # a random moment: once a random number of the items left are recorded (0: during the start-up),
            # plus a random fraction of an item (mid-write) -- or during the merge, or after the end
            target, delay = rng.randint(before, PHOTOS), rng.uniform(0, 2 * KILL_PAUSE)
            proc = _start(photos_dir, out, pause=KILL_PAUSE)
            deadline = time.monotonic() + 240
            while _done(out) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the run did not progress"
                time.sleep(0.005)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            kills.append((round_start // 3, before, target, round(delay, 2), _progress(out)))
            context = f"seed {seed}, kills so far {kills}"
            check_presented_files(out)  # every file a record or the manifest presents is whole
        finished = _records(out)
        if (out / "mask_manifest.json").exists():
            finished += [r["id"] for r in json.loads((out / "mask_manifest.json").read_text())["rows"]]
        assert len(set(finished)) == _done(out)
        kept = _finished(out, set(finished))
        rerun = run_mask(photos_dir, out)
        assert rerun.returncode == 0, (context, rerun.stderr[-3000:])
        assert "Traceback" not in rerun.stderr, context
        assert _finished(out, set(finished)) == kept, context  # nothing finished was redone
        assert final_files(out) == reference, context
    print(f"SIGKILL trials (seed {seed}): {kills}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its new parent) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name != "posix", reason="process groups and parent pids")
def test_workers_stop_when_their_torchrun_launcher_is_killed_outright(photos, tmp_path):
    """torchrun puts each worker in a process group of its own: SIGKILL to the launcher's group (the out-of-memory
    killer, ``kill -9``) used to leave the workers writing on into the folder a rerun works in. They now notice
    the launcher is gone and stop as on SIGTERM; the rerun completes the run."""
    photos_dir, reference = photos
    out = tmp_path / "out"
    proc = subprocess.Popen(mask_command(photos_dir, out, processes=2), env=fault_env(**{PAUSE_ENV: "0.5"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_records(out)) < 2 or len(run_pids(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    workers = list(run_pids(out).values())
    assert all(os.getpgid(pid) != proc.pid for pid in workers)  # not in the launcher's group: a killpg misses them
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "the workers went on after their launcher was killed"
        time.sleep(0.1)
    _stopped_part_way_then_resumed(photos_dir, out, reference)  # each worker finished the item in hand
