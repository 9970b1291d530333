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

    python benchmarks/bench_gate.py [--threads 2] [--items 3] [--steps 20] [--reps 3] [--sam tiny] [--prune-at 5]

EXPERIMENTAL, ``--prune-at K``: one more arm with the largest N: its candidates run K steps as one batch, each one's
predicted clean image (x0 from the guided noise prediction at that step, decoded) is scored, and only the best seed
is then generated in full from its seed (so the kept image is exactly that seed's unpruned image). Prints its cost
against the unpruned arm and how often it picked the seed the full run keeps. Whether the early score predicts
the final one can only be judged with real weights: on random models the agreement means nothing. It uses the
SD2 pipeline's internal steps (``_prepare_batch``, ``_prepare_latents``, ``_predict_noise``, ``_finish``), so
it is a measurement, not a feature.
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


# ---------------------------------------------------------------------------------------------- early pruning
def predicted_clean_latents(scheduler, latents, noise, t):
    """x0 predicted at timestep ``t`` from the guided model output (epsilon or v prediction)."""
    alpha = scheduler.alphas_cumprod[int(t)].to(latents.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha.sqrt() * latents - (1 - alpha).sqrt() * noise
    return (latents - (1 - alpha).sqrt() * noise) / alpha.sqrt()


def early_scores(pipe, sam, image, mask, seeds, steps: int, prune_at: int):
    """EXPERIMENTAL. Run the candidates of ``seeds`` for ``prune_at`` of ``steps`` steps (one batch, the
    pipeline's own steps), decode each one's predicted clean image and score it with the gate's scorer."""
    n = len(seeds)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    batch = pipe._prepare_batch(image[None].expand(n, -1, -1, -1).contiguous(), mask[None].expand(n, -1, -1).contiguous(),
                                [PROMPT] * n, [""] * n, 1, generators)
    embeds = pipe.encode_prompt(batch.prompts, batch.negatives, pipe._execution_device, True)
    latents, conditioning = pipe._prepare_latents(batch, steps, generators, None, True)
    for t in pipe.scheduler.timesteps[:prune_at]:
        noise = pipe._predict_noise(latents, t, conditioning, embeds, 1.0, 7.5, True)
        clean = predicted_clean_latents(pipe.scheduler, latents, noise, t)
        latents = pipe.scheduler.step(noise, t, latents, return_dict=False)[0]
    previews = pipe._finish(clean, batch.repaint[:, 0].cpu(), "pt").images
    return gate.SamGateScorer(sam, mask)(previews)


def run_pruned_arm(pipe, sam, photos, candidates: int, steps: int, prune_at: int) -> tuple[float, list[int]]:
    """EXPERIMENTAL. Score the candidates at ``prune_at``, then make only the best seed, in full from its seed (so
    the kept image is exactly what that seed gives in an unpruned run). (total seconds, chosen seeds)."""
    policy = gate.GatePolicy(candidates=candidates, keep=1)
    total, chosen = 0.0, []
    for k, (image, mask) in enumerate(photos):
        seeds = policy.seeds_of_round(100 * k, 0)
        start = time.perf_counter()
        early = gate.attempts_from_scores(early_scores(pipe, sam, image, mask, seeds, steps, prune_at), seeds, policy)
        best = gate.rank_attempts(early)[0]
        _generate(pipe, image, mask, [best.seed], steps)
        total += time.perf_counter() - start
        chosen.append(best.seed)
    return total, chosen


def _full_choices(pipe, sam, photos, candidates: int, steps: int) -> list[int]:
    policy = gate.GatePolicy(candidates=candidates, keep=1)
    return [gate.run_gate(lambda seeds, i=image, m=mask: _generate(pipe, i, m, seeds, steps),
                          gate.SamGateScorer(sam, mask), policy, first_seed=100 * k).kept[0].seed
            for k, (image, mask) in enumerate(photos)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", type=int, default=3, help="(photo, prompt) items per arm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sam", default="tiny", choices=["tiny", "vit_b"])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prune-at", type=int, default=0,
                        help="EXPERIMENTAL: also an arm with the largest N pruned at this step (0 = no such arm)")
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
        if args.prune_at:
            total, chosen = run_pruned_arm(pipe, sam, photos, max(args.candidates), args.steps, args.prune_at)
            print(f"  rep {rep + 1} N={max(args.candidates)} pruned at step {args.prune_at}: {total:.3f} s")
            best["pruned"] = min(best.get("pruned", (total, chosen)), (total, chosen))
    base = best[args.candidates[0]][0] / best[args.candidates[0]][2]
    for n in args.candidates:
        total, sam_seconds, kept = best[n]
        per = total / kept
        print(f"N={n}: {per:.3f} s per kept image ({per / base:.2f}x N={args.candidates[0]}), "
              f"SAM {100 * sam_seconds / total:.1f} % of the time")
    if args.prune_at:
        n = max(args.candidates)
        total, chosen = best["pruned"]
        per, full = total / len(photos), best[n][0] / best[n][2]
        agree = sum(a == b for a, b in zip(chosen, _full_choices(pipe, sam, photos, n, args.steps)))
        print(f"EXPERIMENTAL N={n} pruned at step {args.prune_at}/{args.steps}: {per:.3f} s per kept image "
              f"({per / full:.2f}x unpruned N={n}); picked the same seed as the full run for {agree} of "
              f"{len(photos)} items (random weights: says nothing about real models)")


if __name__ == "__main__":
    main()
