"""Ctrl-C (SIGINT to the whole process group) or SIGTERM to a ``generate`` run, alone or under ``torchrun`` with two
CPU processes (gloo), then the same command again: no file finished before the interrupt is written again (same
inode, mtime and bytes), ``--dry-run`` lists no finished photo as to do, and the folder ends byte for byte as an
uninterrupted run's. Tiny random models; a short pause after each photo's record leaves time to interrupt."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from sb_testkit.cli_runs import GENERATE_NAMES, child_env, command, file_states, folder_bytes, run_cli, write_generate_inputs

from salient_background.models.runs.engine import PAUSE_ENV
from salient_background.models.runs.ranks import owner

FINISHED = ("generated", "inputs", "masks")


@pytest.fixture(scope="module")
def photos(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    args = [*write_generate_inputs(root), "--pipeline", tiny_sd.hf_pipeline_dir]
    assert {owner(n.replace("/", "__"), 2) for n in GENERATE_NAMES} == {0, 1}
    reference = run_cli([*args, "--output-dir", root / "reference"])
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root, args


def _default_sigint() -> None:
    """A shell that starts the tests in the background ignores SIGINT in them, and Python keeps an ignored SIGINT:
    the command must see Ctrl-C as a user's terminal sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(args, out, processes: int, sig) -> subprocess.CompletedProcess:
    """Start the command in its own process group; once its first image is written, send ``sig`` to the group."""
    proc = subprocess.Popen(command(args, processes), env=child_env(**{PAUSE_ENV: "1"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 240
        generated = out / "generated"
        while not (generated.is_dir() and any(n.endswith(".png") for n in os.listdir(generated))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("processes, sig", [(1, signal.SIGINT), (1, signal.SIGTERM), (2, signal.SIGINT)],
                         ids=["1-SIGINT", "1-SIGTERM", "2-SIGINT"])
def test_an_interrupted_run_resumed_redoes_nothing_finished(photos, processes, sig):
    root, args = photos
    out = root / f"run{processes}-{sig.name}"
    stopped = _interrupt([*args, "--output-dir", out], out, processes, sig)
    if processes == 1:  # (torchrun reports its own signal with a traceback of its own)
        assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
        assert stopped.stderr.strip().endswith("interrupted; rerun the same command to resume")
    finished = file_states(out, FINISHED)
    generated = [p for p in finished if p.startswith("generated")]
    assert 0 < len(generated) < 2 * len(GENERATE_NAMES), stopped.stderr[-3000:]  # stopped part way

    if sig == signal.SIGINT:
        dry = run_cli([*args, "--output-dir", out, "--dry-run"])
        done_ids = {os.path.basename(p).rsplit("_s", 1)[0] for p in generated}
        listed = dict(re.findall(r"^(\S+)\t\S+\t(.*)$", dry.stdout, re.M))
        assert all(listed[i] == "done" for i in done_ids), dry.stdout

    resumed = run_cli([*args, "--output-dir", out], processes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(generated)} already done" in resumed.stdout, resumed.stdout
    after = file_states(out, FINISHED)
    rewritten = [p for p, state in finished.items() if after[p] != state]
    assert not rewritten, rewritten
    assert folder_bytes(out) == folder_bytes(root / "reference")
