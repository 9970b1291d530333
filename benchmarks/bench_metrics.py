"""Benchmark: the comparison table's whole metric set against torchmetrics' FID alone, on the same images.

One run of ``--images`` generated images (``--images / 2`` inputs x 2 seeds, ``--size`` px, written as a
``generate`` run folder) and the inputs' photos as the reference set. Two arms, each in its own process so each
process's peak memory is its own, timed after the models are loaded:

* ``fid``: torchmetrics' ``FrechetInceptionDistance`` on the pack's FID Inception (the same network object the
  table uses), fed the images read from disk in batches of ``--batch``, then ``compute()``;
* ``all``: the table's metric pass (``models/scoring/comparison``): expansion (SAM), Inception features (FID, KID),
  CLIP score, object similarity (DINOv2), LPIPS diversity, each image measured into a fresh cache, the reference
  features, then the table with ``--bootstrap`` resamples.

Models are random weights in the real file formats, loaded through the user's code path: the full-size FID
Inception and LPIPS AlexNet, SAM ``--sam`` (vit_b = full size), and the test kit's tiny CLIP and DINOv2 (so CLIP
score and object similarity cost far less here than with ViT-L/14 and DINOv2-base; the line says so).

    python benchmarks/bench_metrics.py [--images 16] [--size 512] [--sam vit_b] [--threads 2] [--batch 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # sb_testkit and the package import shim

import conftest  # noqa: E402,F401  (registers the package as salient_background when not installed)


def _write_run(root: str, images: int, size: int) -> None:
    """A generate-layout run: inputs/, masks/, generated/<id>_s<seed>.png and manifest.json."""
    from PIL import Image

    from sb_testkit.images import object_on_background

    for sub in ("inputs", "masks", "generated"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rows = []
    for i in range(images // 2):
        image, mask = object_on_background(size, size, seed=i)
        save = lambda t, p: Image.fromarray((t.numpy() * 255).round().astype(np.uint8)).save(p)  # noqa: E731
        save(image, os.path.join(root, "inputs", f"i{i}.png"))
        save(mask, os.path.join(root, "masks", f"i{i}.png"))
        row = {"id": f"i{i}", "mask": f"masks/i{i}.png", "original": f"inputs/i{i}.png", "source": "",
               "prompt": f"a photo number {i}", "controlnet_scale": 0.0, "images": []}
        for seed in (0, 1):
            noisy, _ = object_on_background(size, size, seed=1000 * (seed + 1) + i)
            save(noisy, os.path.join(root, "generated", f"i{i}_s{seed}.png"))
            row["images"].append({"seed": seed, "generated": f"generated/i{i}_s{seed}.png", "restored": ""})
        rows.append(row)
    with open(os.path.join(root, "manifest.json"), "w") as fh:
        json.dump({"rows": rows}, fh)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def arm_fid(args) -> dict:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    from salient_background.commands.evaluate_inputs import load_image
    from salient_background.models.scoring.metrics import load_inception
    from salient_background.models.scoring.metrics.images import to_uint8_nchw

    inception = load_inception(os.path.join(args.models, "metrics", "pt_inception-2015-12-05-6726825d.pth"))
    generated = sorted(os.path.join(args.run, "generated", n) for n in os.listdir(os.path.join(args.run, "generated")))
    reference = sorted(os.path.join(args.run, "inputs", n) for n in os.listdir(os.path.join(args.run, "inputs")))
    start = time.perf_counter()
    fid = FrechetInceptionDistance(feature=inception.network)
    for files, real in ((reference, True), (generated, False)):
        for k in range(0, len(files), args.batch):
            batch = torch.cat([load_image(p) for p in files[k:k + args.batch]])
            fid.update(to_uint8_nchw(batch), real=real)
    value = float(fid.compute())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(generated), "value": value, "peak_mib": _peak_mib()}


def arm_all(args) -> dict:
    from salient_background.commands.evaluate_inputs import load_image, load_mask
    from salient_background.models.runs.ranks import Ranks
    from salient_background.models.scoring.comparison import compare, grouping, runs as run_io
    from salient_background.models.scoring.comparison.cache import MeasurementCache
    from salient_background.models.scoring.comparison.measure import ImageJob
    from salient_background.models.scoring.comparison.parts import PartSettings, Readers, build_parts

    settings = PartSettings(Readers(load_image, load_mask), sam_path=args.sam_path, models_dir=args.models)
    built = build_parts([], settings, "cpu")
    assert not built.missing, built.missing
    runs = [run_io.read_run("run", args.run)]
    ids = run_io.shared_inputs(runs)
    jobs = run_io.image_jobs(runs, ids)
    reference_jobs = [ImageJob("reference", i, 0, os.path.join(args.run, "inputs", f"{i}.png")) for i in ids]
    ranks = Ranks()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = MeasurementCache(tmp)
        results = compare.measure_runs(built.parts, jobs, cache, ranks, batch_size=args.batch)
        reference = compare.reference_features(built.feature_parts, reference_jobs, cache, ranks, batch_size=args.batch)
        table = compare.make_table(runs, ids, {i: (grouping.ALL, None) for i in ids}, results, built.set_metrics,
                                   reference, resamples=args.bootstrap, seed=0, settings={})
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(jobs), "value": table["blocks"][0]["rows"][0]["values"]["fid"],
            "peak_mib": _peak_mib(), "metrics": [p.name for p in built.parts]}


def _child(args, arm: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--arm", arm, "--run", args.run, "--models", args.models,
           "--sam-path", args.sam_path, "--batch", str(args.batch), "--threads", str(args.threads),
           "--bootstrap", str(args.bootstrap)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16, help="generated images (half as many inputs, 2 seeds)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--sam", default="vit_b", help="SAM variant with random weights: vit_b or tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--arm", choices=["fid", "all"], help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--sam-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.arm:
        print(json.dumps((arm_fid if args.arm == "fid" else arm_all)(args)))
        return
    from sb_testkit.metric_models import write_metric_models
    from sb_testkit.sam import save_random_sam

    print(f"torch {torch.__version__}, threads {args.threads}, {args.images} images of {args.size} px "
          f"({args.images // 2} inputs x 2 seeds), reference {args.images // 2} photos, batch {args.batch}, "
          f"load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        args.models, args.run = os.path.join(tmp, "models"), os.path.join(tmp, "run")
        write_metric_models(args.models)
        args.sam_path = save_random_sam(os.path.join(tmp, f"sam_{args.sam}.pth"), args.sam, seed=0)
        _write_run(args.run, args.images, args.size)
        fid = _child(args, "fid")
        whole = _child(args, "all")
    print(f"torchmetrics FID alone: {fid['images'] / fid['seconds']:.2f} images/s ({fid['seconds']:.1f} s), "
          f"peak RSS {fid['peak_mib']:.0f} MiB")
    print(f"whole metric set ({', '.join(whole['metrics'])}; SAM {args.sam}, tiny CLIP and DINOv2) + table with "
          f"{args.bootstrap} resamples: {whole['images'] / whole['seconds']:.2f} images/s ({whole['seconds']:.1f} s), "
          f"peak RSS {whole['peak_mib']:.0f} MiB")
    print(f"ratio: the whole set takes {whole['seconds'] / fid['seconds']:.2f}x the time of FID alone "
          f"(FID {fid['value']:.4f} vs the table's {whole['value']:.4f})")


if __name__ == "__main__":
    main()
