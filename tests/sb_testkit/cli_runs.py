"""Running the command line in a child process, alone or under ``torchrun`` (gloo, CPU), and reading what it wrote."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID")


def command(args, processes: int = 1) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "salient_background", *map(str, args)]


def child_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def run_cli(args, processes: int = 1, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, processes), env=child_env(**extra_env), capture_output=True, text=True,
                          timeout=300)


def folder_bytes(folder, drop_columns=()) -> dict:
    """{relative path: bytes} of every file under ``folder``; CSV columns in ``drop_columns`` removed."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                data = fh.read()
            if name.endswith(".csv") and drop_columns:
                rows = list(csv.DictReader(io.StringIO(data.decode())))
                data = json.dumps([{k: v for k, v in r.items() if k not in drop_columns} for r in rows]).encode()
            found[os.path.relpath(path, folder)] = data
    return found


def file_states(folder, under=("",)) -> dict:
    """{relative path: (inode, mtime_ns, bytes)} of the files below ``folder``/<each of ``under``>: what a rerun
    must leave untouched."""
    states = {}
    for sub in under:
        for root, _, names in os.walk(os.path.join(folder, sub)):
            for name in names:
                path = os.path.join(root, name)
                st = os.stat(path)
                with open(path, "rb") as fh:
                    states[os.path.relpath(path, folder)] = (st.st_ino, st.st_mtime_ns, fh.read())
    return states


# photos of two sizes in a subfolder too ("sub/d"), chosen so that each of two processes owns some (the share is a
# hash of the id)
GENERATE_NAMES = ("a", "cat", "dog", "sub/d", "h")


def write_generate_inputs(root, names=GENERATE_NAMES) -> list:
    """Random photos ``<root>/photos/<name>.png`` and a rectangle mask for each in ``<root>/masks`` (the name with
    ``/`` as ``__``, as ``generate`` names its items); returns the ``generate`` arguments for them on the tiny
    pipeline folder, without ``--pipeline`` and ``--output-dir``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        h, w = (64, 64) if i % 2 == 0 else (48, 96)
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "photos" / f"{name}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[8:40, 16:48] = 255
        Image.fromarray(mask).save(root / "masks" / (name.replace("/", "__") + "_mask.png"))
    return ["generate", root / "photos", "--masks", root / "masks", "--prompt", "a swan", "--size", "64", "--steps",
            "2", "--num-images", "2", "--no-progress"]
