"""The ``mask`` command with a stand-in model, run in a child process where faults can be injected.

``python -m sb_testkit.faults <mask arguments...>`` (with ``tests/`` on ``PYTHONPATH``, alone or under torchrun) runs
``python -m salient_background mask ...`` exactly, except that the InSPyReNet model is :class:`RedChannel` (the mask
is the photo's red channel: free, and each output shows which photo it came from). Faults, from the environment:

* ``SB_FAULT_FSIZE=<bytes>``: no file may grow past that size (``RLIMIT_FSIZE``, which needs no privilege); a write
  past it fails with EFBIG, as a full disk fails with ENOSPC (SIGXFSZ is ignored so the write fails rather than
  the process dying);
* ``SB_FAULT_PHASES=<path>``: the seconds each step of the command took (finding the inputs, ids, reading the
  folder's state, planning, the items, the merge) and the count of pending records at the merge are appended to
  that file as one JSON line per process (used by ``benchmarks/sim_catalogue.py``).

The helpers below run it and describe an output folder for comparisons.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.abspath(__file__)  # the file named must exist; the stand-in never reads it


class RedChannel:
    """InSPyReNet's ``predict`` API; the map is the red channel (0..1)."""

    def predict(self, images, **kw):
        import torch

        from salient_background.models.networks.salient import SalientPrediction

        return SalientPrediction(maps=images[..., 0].float(), raw_max=torch.ones(images.shape[0]),
                                 empty=[False] * images.shape[0])


def _timed(module, name: str, phases: dict) -> None:
    real = getattr(module, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - began

    setattr(module, name, wrapper)


def _record_phases(path: str) -> dict:
    from salient_background.commands import mask
    from salient_background.models.runs import journal

    phases: dict = {}
    for name in ("find_images", "output_paths", "read_folder_state", "plan", "run_shared_part", "_merge", "_dry_run"):
        _timed(mask, name, phases)
    real_pending = journal.Journal.pending

    def pending(self):
        records = real_pending(self)
        phases["pending_records_read"] = max(phases.get("pending_records_read", 0), len(records))
        phases["journal_files_read"] = max(phases.get("journal_files_read", 0), len(self._read))
        return records

    journal.Journal.pending = pending
    return phases


def main(argv: list[str]) -> int:
    import resource

    import salient_background.models.networks.salient as salient
    from salient_background import cli

    limit = os.environ.get("SB_FAULT_FSIZE")
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    salient.load_salient_model = lambda *a, **k: RedChannel()
    phases_path = os.environ.get("SB_FAULT_PHASES")
    phases = _record_phases(phases_path) if phases_path else None
    began = time.perf_counter()
    code = cli.main(argv)
    if phases is not None:
        phases["total"] = time.perf_counter() - began
        phases["rank"] = int(os.environ.get("RANK", "0"))
        with open(phases_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(phases) + "\n")
    return code


# ---------------------------------------------------------------------------------------------- for the tests
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID")


def mask_command(photos, out, *extra, processes: int = 1) -> list[str]:
    """The command line of a ``mask`` run of ``photos`` into ``out`` with the stand-in model."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    device = ["--device", "cpu"] if processes == 1 else []  # several processes pick theirs (the CPU here)
    return [sys.executable, *launcher, "-m", "sb_testkit.faults", "mask", str(photos), "--output-dir", str(out),
            "--checkpoint", CHECKPOINT, *device, "--no-progress", *map(str, extra)]


def fault_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **{k: str(v) for k, v in extra.items()})
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([TESTS, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_mask(photos, out, *extra, processes: int = 1, **env) -> subprocess.CompletedProcess:
    return subprocess.run(mask_command(photos, out, *extra, processes=processes), env=fault_env(**env),
                          capture_output=True, text=True, timeout=300)


def write_photos(folder, count: int, size=(48, 32), seed: int = 0) -> list[str]:
    """``count`` noisy RGB PNGs (noise: a PNG of some kilobytes, so a file-size limit can fall inside one)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        name = f"photo{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(os.path.join(folder, name))
        names.append(name)
    return names


def final_files(folder) -> dict:
    """{relative path: bytes} of what a finished run presents: every file, except that the manifests' absolute
    source paths are kept as they are (same photos folder in both runs)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, folder)] = fh.read()
    return found


def recorded(folder, kind: str = "mask") -> dict:
    """{id: record} of the records a run left unmerged in ``folder``, read as the command reads them."""
    from salient_background.models.runs.journal import Journal

    return Journal(str(folder), kind).pending()


def record_stopped_run(folder, records: dict, kind: str = "mask") -> None:
    """Leave ``records`` ({id: record}) unmerged in ``folder``, as a run stopped before its merge does."""
    from salient_background.models.runs.journal import Journal

    journal = Journal(str(folder), kind)
    for key, record in records.items():
        journal.write(key, record)
    journal.close()


def journal_files(folder, kind: str = "mask") -> list:
    """The journal files of ``folder`` (``pathlib.Path``s, in the order the runs began)."""
    from salient_background.models.runs.journal import JOURNAL_SUFFIX, RECORDS_FOLDER

    records = os.path.join(str(folder), RECORDS_FOLDER, kind)
    names = sorted(os.listdir(records)) if os.path.isdir(records) else []
    return [pathlib.Path(records, n) for n in names if n.endswith(JOURNAL_SUFFIX)]


def run_pids(folder, kind: str = "mask") -> dict:
    """{rank: pid} of the processes of a run in ``folder``, from the progress counters each writes
    (``rank<k>.json`` names its pid; torchrun's workers sit in process groups of their own, so a test or a
    simulation that kills a whole run kills these too)."""
    from salient_background.models.runs.journal import RECORDS_FOLDER

    counters = os.path.join(str(folder), RECORDS_FOLDER, kind + ".progress")
    pids = {}
    for name in os.listdir(counters) if os.path.isdir(counters) else []:
        try:
            with open(os.path.join(counters, name), encoding="utf-8") as fh:
                pids[int(name[len("rank"):-len(".json")])] = int(json.load(fh)["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return pids


def check_presented_files(folder) -> None:
    """Every output the manifest and the pending records present as done is a whole, decodable PNG (and every
    record and the manifest are whole JSON)."""
    from PIL import Image

    manifest = os.path.join(folder, "mask_manifest.json")
    rows = []
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as fh:
            rows = json.load(fh)["rows"]
    rows.extend(recorded(folder).values())  # a journal line is whole or ignored (a cut one counts as not written)
    for row in rows:
        for key in ("mask", "cutout"):
            with Image.open(os.path.join(folder, row[key])) as picture:
                picture.load()  # a truncated file raises here


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
