"""Benchmark: our salient mask vs the reference (transparent-background 1.2.12) on the same random weights.

One run: a full-size InSPyReNet (Swin-B) checkpoint in the official layout is generated once; each arm then
runs in its own subprocess (so its peak resident memory, ``ru_maxrss``, is its own) with the same thread
count, one warm-up call and ``--repeats`` timed calls on a 1024x1024 synthetic photo. The arms alternate for
``--rounds`` rounds (ours first in even rounds, the reference first in odd ones) and each arm's fastest call
counts, so that load from other processes on a shared machine inflates neither arm more than the other.
Timed: the whole image -> float map path (8-bit image in, resize, network, sigmoid, normalisation, resize
back). Prints both absolute times, the ratio ours/reference (goal <= 0.7x) and peak memory, then ours at
batch 1 vs batch N (the per-image gain from batching; the reference's ``Remover.process`` takes one image
at a time).

The reference arm runs only where ``transparent_background`` is importable; the simplest set-up is a scratch
venv with the reference installed and this pack installed into it with ``pip install -e <repo> --no-deps``:

    <venv>/bin/python benchmarks/bench_salient.py [--threads 2] [--mode base] [--size 1024] [--repeats 2]
        [--rounds 3] [--batch 4] [--checkpoint ckpt.pth]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
BASE_SIZES = {"base": 1024, "fast": 384}


def _import_pack() -> None:
    """Make ``salient_background`` and ``sb_testkit`` importable (installed package, else the repo root)."""
    sys.path.insert(0, TESTS)
    try:
        import salient_background  # noqa: F401
    except ImportError:
        root = os.path.dirname(HERE)
        spec = importlib.util.spec_from_file_location(
            "salient_background", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["salient_background"] = module
        spec.loader.exec_module(module)


def _image(size: int):
    from sb_testkit.inspyrenet import synthetic_photo

    return synthetic_photo(size, size, seed=3)


def _worker(args) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    image = _image(args.size)
    if args.arm == "ours":
        from salient_background.models.networks.salient import load_salient_model

        model = load_salient_model(args.checkpoint, mode=args.mode, device="cpu")
        batch = torch.from_numpy(np.stack([image] * args.batch)).float().div(255.0)

        def run():
            return model.predict(batch, threshold_empty=0.0).maps
    else:
        import torchvision.transforms as transforms
        from PIL import Image
        from transparent_background.InSPyReNet import InSPyReNet_SwinB
        from transparent_background.utils import dynamic_resize, normalize, static_resize, tonumpy, totensor

        base = BASE_SIZES[args.mode]
        net = InSPyReNet_SwinB(depth=64, pretrained=False, base_size=[base, base], threshold=None)
        net.eval()
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True), strict=True)
        transform = transforms.Compose([  # Remover's 1.2.12 transform for the mode
            static_resize(size=[384, 384]) if args.mode == "fast" else dynamic_resize(L=1280),
            tonumpy(), normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), totensor(),
        ])
        pil = Image.fromarray(image)

        def run():  # Remover.process up to the float map
            x = transform(pil).unsqueeze(0)
            with torch.no_grad():
                pred = net(x)
            return F.interpolate(pred, pil.size[::-1], mode="bilinear", align_corners=True)

    run()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "arm": args.arm, "batch": args.batch, "times": times,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _spawn(args, arm: str, batch: int, checkpoint: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--arm", arm, "--batch", str(batch),
           "--checkpoint", checkpoint, "--threads", str(args.threads), "--mode", args.mode,
           "--size", str(args.size), "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=sorted(BASE_SIZES), default="base")
    parser.add_argument("--size", type=int, default=1024, help="square image side in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per arm and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two arms")
    parser.add_argument("--batch", type=int, default=4, help="batch size for the batching comparison")
    parser.add_argument("--checkpoint", help="use this checkpoint instead of generating random weights")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    _import_pack()
    if args.worker:
        _worker(args)
        return

    import torch

    has_reference = importlib.util.find_spec("transparent_background") is not None
    print(f"torch {torch.__version__}, threads {args.threads}, mode {args.mode} (base size {BASE_SIZES[args.mode]}), "
          f"image {args.size}x{args.size}, {args.rounds} alternating rounds of {args.repeats} timed runs after 1 warm-up, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from sb_testkit.inspyrenet import random_inspyrenet_state_dict, save_pth

            torch.set_num_threads(args.threads)
            checkpoint = save_pth(random_inspyrenet_state_dict(0, BASE_SIZES[args.mode]), os.path.join(tmp, "ckpt.pth"))
        arms = ["ours", "reference"] if has_reference else ["ours"]
        if not has_reference:
            print("reference: transparent_background is not importable here; run this script with a venv that has it")
        runs = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            for arm in arms if round_ % 2 == 0 else arms[::-1]:
                result = _spawn(args, arm, 1, checkpoint)
                runs[arm].append(result)
                print(f"round {round_ + 1} {arm:9s}: {', '.join(f'{t:.3f}' for t in result['times'])} s, "
                      f"peak RSS {result['maxrss_mib']:.0f} MiB, load average {os.getloadavg()[0]:.2f}", flush=True)
        best = {arm: min(t for r in results for t in r["times"]) for arm, results in runs.items()}
        rss = {arm: max(r["maxrss_mib"] for r in results) for arm, results in runs.items()}
        for arm in arms:
            print(f"{arm:9s} batch 1: best {best[arm]:.3f} s of {args.rounds} x {args.repeats} runs, "
                  f"peak RSS {rss[arm]:.0f} MiB", flush=True)
        if has_reference:
            print(f"ratio ours/reference: {best['ours'] / best['reference']:.3f}x (goal <= 0.7x); "
                  f"peak memory ratio {rss['ours'] / rss['reference']:.3f}x", flush=True)
        best = best["ours"]
        if args.batch > 1:
            batched = _spawn(args, "ours", args.batch, checkpoint)
            per_image = min(batched["times"]) / args.batch
            print(f"ours      batch {args.batch}: best {min(batched['times']):.3f} s = {per_image:.3f} s/image, "
                  f"peak RSS {batched['maxrss_mib']:.0f} MiB; per-image gain from batching {best / per_image:.3f}x")

if __name__ == "__main__":
    main()
