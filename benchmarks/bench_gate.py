"""Benchmark: what the quality gate costs per kept image, for N = 1, 2, 4 candidates, and the share spent in SAM.

One run on this machine's CPU: the tiny random SD2-inpainting pipeline + salient ControlNet of the test kit
(built in the real diffusers layout, loaded with ``load_pipeline`` as the command does) generates the candidates
of each (photo, prompt) as one batch, and a random SAM in Meta's layout (``--sam tiny``, default, or the full-size
``vit_b``; loaded with ``load_sam``) scores them through ``SamGateScorer``. Each arm keeps 1 image per item, with
no threshold (one round), so N candidates cost N generations plus N SAM embeddings. Arms are interleaved per
repetition (machine load drifts hit them alike) after one warm-up; each arm's fastest repetition counts.

Prints, per N: seconds per kept image, the ratio to N = 1 measured in the same run, and the share of the time
spent in SAM scoring. With tiny generators, SAM's share is far larger than with real SD2/SDXL weights, where one
sampling step of the real UNet costs more than a SAM embedding: the ratios to N = 1 are what carries over.

    python benchmarks/bench_gate.py [--threads 2] [--items 3] [--steps 20] [--reps 3] [--sam tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # sb_testkit and the package import shim

import conftest  # noqa: E402,F401  (registers the package as salient_background when not installed)
from salient_background.models.generation.loading import load_pipeline  # noqa: E402
from salient_background.models.networks.sam import load_sam  # noqa: E402
from salient_background.models.scoring import gate  # noqa: E402
from sb_testkit.diffusers_models import TINY_IMAGE_SIZE, build_tiny_sd_models  # noqa: E402
from sb_testkit.images import object_on_background  # noqa: E402
from sb_testkit.sam import save_random_sam  # noqa: E402

PROMPT = "a marble table in a sunlit spa"


class TimedScorer:
    """The gate's SAM scorer with its wall time added up."""

    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def __call__(self, images):
        start = time.perf_counter()
        scores = self.scorer(images)
        self.seconds += time.perf_counter() - start
        return scores


def run_arm(pipe, sam, photos, candidates: int, steps: int) -> tuple[float, float, int]:
    """(total seconds, SAM seconds, kept images) for every photo through the gate with ``candidates``."""
    policy = gate.GatePolicy(candidates=candidates, keep=1)
    total, sam_seconds, kept = 0.0, 0.0, 0
    for k, (image, mask) in enumerate(photos):
        def generate(seeds, image=image, mask=mask):
            return _generate(pipe, image, mask, seeds, steps)

        scorer = TimedScorer(gate.SamGateScorer(sam, mask))
        start = time.perf_counter()
        result = gate.run_gate(generate, scorer, policy, first_seed=100 * k)
        total += time.perf_counter() - start
        sam_seconds += scorer.seconds
        kept += len(result.kept)
    return total, sam_seconds, kept


def _generate(pipe, image, mask, seeds, steps):
    n = len(seeds)
    out = pipe(image[None].expand(n, -1, -1, -1).contiguous(), mask[None].expand(n, -1, -1).contiguous(),
               [PROMPT] * n, [""] * n, num_inference_steps=steps,
               generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt", show_progress=False)
    return out.images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", type=int, default=3, help="(photo, prompt) items per arm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sam", default="tiny", choices=["tiny", "vit_b"])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        models = build_tiny_sd_models(tmp)
        pipe = load_pipeline(models.hf_pipeline_dir)
        sam = load_sam(save_random_sam(os.path.join(tmp, "sam.pth"), args.sam, seed=0)).model
    size = TINY_IMAGE_SIZE
    photos = [object_on_background(size, size, seed=k) for k in range(args.items)]
    print(f"generator: tiny random SD2 inpainting + salient ControlNet, {size}x{size}, {args.steps} steps; "
          f"SAM: random {args.sam}; {args.items} items per arm, keep 1, no threshold")
    run_arm(pipe, sam, photos[:1], max(args.candidates), args.steps)  # warm-up
    best: dict[int, tuple] = {}
    for rep in range(args.reps):
        for n in args.candidates:
            total, sam_seconds, kept = run_arm(pipe, sam, photos, n, args.steps)
            print(f"  rep {rep + 1} N={n}: {total:.3f} s for {kept} kept, SAM {sam_seconds:.3f} s")
            if n not in best or total < best[n][0]:
                best[n] = (total, sam_seconds, kept)
    base = best[args.candidates[0]][0] / best[args.candidates[0]][2]
    for n in args.candidates:
        total, sam_seconds, kept = best[n]
        per = total / kept
        print(f"N={n}: {per:.3f} s per kept image ({per / base:.2f}x N={args.candidates[0]}), "
              f"SAM {100 * sam_seconds / total:.1f} % of the time")


if __name__ == "__main__":
    main()
