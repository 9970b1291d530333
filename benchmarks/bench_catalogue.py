"""Benchmark: ``generate`` over a folder of photos, one process with 2 threads vs two processes with 1 thread each.

Both arms run the real command on the same folder (``--photos`` photos of 768x512, JPEG, with their masks) with the
tiny random SD2-inpainting + ControlNet of the test kit (so the machine's two cores, not memory, set the pace), each
into a fresh output folder; the arms are interleaved and the fastest of ``--repeats`` is kept (other load on a shared
machine only ever adds time). Printed per arm:

* photos per minute over the run itself (from the first photo read to the last written: the slowest process's
  time, as each process logs it with ``-v``) and over the whole command (with Python start-up and model loading);
* the share of that time the model was busy (``compute`` in models/runs/engine.py): the rest is the process waiting
  for a photo to be decoded or a result to be written, which the I/O threads are there to hide.

And the ratios of photos per minute: 2 processes / 1 process of 2 threads, and 2 processes / 1 process of 1 thread
(a third arm, the per-process baseline: how well the processes scale).

    python benchmarks/bench_catalogue.py [--photos 24] [--size 128] [--steps 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the test kit's tiny models

STATS = re.compile(r"generate \[process (\d+) of (\d+)\]: (\d+) item\(s\) done, (\d+) failed in ([\d.]+) s; "
                   r"model busy ([\d.]+) s")


def make_folder(root: str, photos: int) -> tuple[str, str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    photo_dir, mask_dir = os.path.join(root, "photos"), os.path.join(root, "masks")
    os.makedirs(photo_dir)
    os.makedirs(mask_dir)
    for i in range(photos):
        base = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)  # smooth content: a realistic JPEG, not noise
        picture = Image.fromarray(base).resize((768, 512), Image.BICUBIC)
        picture.save(os.path.join(photo_dir, f"photo{i:03d}.jpg"), quality=90)
        mask = np.zeros((512, 768), np.uint8)
        mask[128:400, 256:560] = 255
        Image.fromarray(mask).save(os.path.join(mask_dir, f"photo{i:03d}_mask.png"))
    return photo_dir, mask_dir


def run_arm(processes: int, threads: int, common: list[str], out: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "salient_background", "-v", "generate", *common, "--output-dir", out]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the {processes}-process arm failed:\n{result.stderr[-4000:]}")
    stats = [tuple(float(x) for x in m.groups()) for m in STATS.finditer(result.stderr)]
    if len(stats) != processes:
        raise SystemExit(f"expected {processes} stats lines, found {len(stats)}:\n{result.stderr[-4000:]}")
    items = sum(s[2] for s in stats)
    run_wall = max(s[4] for s in stats)
    return {"items": items, "run_seconds": run_wall, "command_seconds": total,
            "busy": sum(s[5] for s in stats) / sum(s[4] for s in stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="canvas size (default 128)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from sb_testkit.diffusers_models import tiny_sd_models

    with tempfile.TemporaryDirectory(prefix="bench_catalogue_") as root:
        models = tiny_sd_models(os.path.join(root, "models"))
        photos, masks = make_folder(root, args.photos)
        common = [photos, "--pipeline", models.hf_pipeline_dir, "--masks", masks, "--prompt", "a wooden table",
                  "--size", str(args.size), "--steps", str(args.steps), "--no-progress"]
        # the third arm tells the two apart: what one process of one thread does alone
        arms = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1), "1 process x 1 thread": (1, 1)}
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for name, (processes, threads) in arms.items():
                out = os.path.join(root, f"out-{processes}x{threads}-{repeat}")
                measured = run_arm(processes, threads, common, out)
                if name not in best or measured["run_seconds"] < best[name]["run_seconds"]:
                    best[name] = measured
        print(f"generate, {args.photos} photos 768x512 JPEG, tiny random models, canvas {args.size}, "
              f"{args.steps} steps, batch 1, 2 I/O threads per process; best of {args.repeats}")
        for name, m in best.items():
            print(f"{name}: {60 * m['items'] / m['run_seconds']:.0f} photos/min over the run "
                  f"({m['run_seconds']:.2f} s), {60 * m['items'] / m['command_seconds']:.0f} photos/min over the "
                  f"command ({m['command_seconds']:.1f} s); model busy {100 * m['busy']:.0f} % of the run")
        one, two = best["1 process x 2 threads"], best["2 processes x 1 thread"]
        print(f"2 processes x 1 thread / 1 process x 2 threads: {one['run_seconds'] / two['run_seconds']:.2f}x photos "
              f"per minute over the run, {one['command_seconds'] / two['command_seconds']:.2f}x over the command")
        single = best["1 process x 1 thread"]
        print(f"2 processes x 1 thread / 1 process x 1 thread: {single['run_seconds'] / two['run_seconds']:.2f}x photos "
              "per minute over the run (2.00x = the processes scale perfectly)")


if __name__ == "__main__":
    main()
