"""Benchmark: cost of the object-expansion score against SAM's image encoder, and embedding reuse.

One run, vit_b with random weights in Meta's layout (built here, loaded through ``load_sam`` like a user's file),
CPU, the same thread count and one warm-up for every arm; arms are interleaved per repetition so machine load
drifts hit them alike. Prints absolute times and ratios:

1. scoring one generated image (``score_expansion``: uint8 conversion, SAM pre-processing, encoder, prompt
   sampling, decoder, metric) vs the image encoder's forward alone on the same pre-processed input.
   Goal: <= 1.1x. Also the same scoring call with the encoder answering from a cache, which isolates what the
   scoring adds (robust to the load of a shared machine, unlike the difference of two long timings).
2. K prompt sets on one image (K seeds of the point sampling): one embedding reused vs re-embedding per set.

    python benchmarks/bench_sam_expansion.py [--threads 2] [--reps 3] [--k 3] [--size 512]
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
from salient_background.models.scoring.expansion import score_expansion  # noqa: E402
from salient_background.models.networks.sam import SamImageSession, load_sam, prompts_from_mask  # noqa: E402
from sb_testkit.images import object_on_background  # noqa: E402
from sb_testkit.sam import save_random_sam  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--k", type=int, default=3, help="prompt sets per image in part 2")
    parser.add_argument("--size", type=int, default=512, help="generated image side in pixels")
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--variant", default="vit_b", help="vit_b (the benchmark) or tiny (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average at start {os.getloadavg()}")

    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_sam(os.path.join(tmp, f"sam_{args.variant}_random.pth"), args.variant, seed=0)
        loaded = load_sam(path)
    model = loaded.model
    print(f"model: {loaded.architecture.describe()}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    image, mask = object_on_background(args.size, args.size, seed=1)

    # the encoder's own input, exactly as SamPredictor prepares it
    session = SamImageSession(model, image)  # warm-up of the whole path (encoder included)
    session.predict(prompts_from_mask(mask, args.points, 0))
    pred = session.predictor
    from segment_anything.utils.transforms import ResizeLongestSide
    from salient_background.models.imaging.image_ops import image_to_uint8

    resized = ResizeLongestSide(model.image_encoder.img_size).apply_image(image_to_uint8(image))
    x = model.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float())
    assert tuple(x.shape[-2:]) == (1024, 1024) and pred.input_size == tuple(resized.shape[:2])

    encoder_t, score_t, rest_t = [], [], []
    real_forward = model.image_encoder.forward
    with torch.no_grad():
        features = model.image_encoder(x)
        for rep in range(args.reps):
            encoder_t.append(timed(lambda: model.image_encoder(x))[0])
            t, run = timed(lambda: score_expansion(model, image[None], mask, points=args.points, seed=rep))
            score_t.append(t)
            # everything but the encoder: the same call with the encoder answering from a cache
            model.image_encoder.forward = lambda *_a, **_k: features
            try:
                t_rest, run_rest = timed(lambda: score_expansion(model, image[None], mask, points=args.points, seed=rep))
            finally:
                model.image_encoder.forward = real_forward
            rest_t.append(t_rest)
            assert torch.equal(run.sam_masks, run_rest.sam_masks)
            print(f"rep {rep + 1}: encoder {encoder_t[-1]:.2f} s, scoring {t:.2f} s, scoring without the encoder "
                  f"{t_rest:.3f} s (E = {run.scores[0].expansion_px:.0f} px)", flush=True)
        prompts = [prompts_from_mask(mask, args.points, seed) for seed in range(args.k)]  # same for both arms

        def reuse():
            s = SamImageSession(model, image)
            return [s.predict(p) for p in prompts]

        def reembed():
            return [SamImageSession(model, image).predict(p) for p in prompts]

        t_reuse, a = timed(reuse)
        t_reembed, b = timed(reembed)
        assert all(torch.equal(p.mask, q.mask) for p, q in zip(a, b)), "reuse must not change the masks"

    enc, sco, rest = min(encoder_t), min(score_t), min(rest_t)
    print()
    print(f"image {args.size}x{args.size}, {args.points} points, {args.reps} repetitions, best of each "
          "(the machine is shared: the minimum is the least disturbed run)")
    print(f"1. image encoder alone:               {enc:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in encoder_t)})")
    print(f"   scoring one image:                 {sco:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in score_t)})")
    print(f"   ratio scoring / encoder = {sco / enc:.3f}x (goal <= 1.1x)")
    print(f"   scoring without the encoder:       {rest:8.3f} s   -> (encoder + rest) / encoder = "
          f"{(enc + rest) / enc:.3f}x")
    print(f"2. {args.k} prompt sets, one embedding reused: {t_reuse:8.2f} s")
    print(f"   {args.k} prompt sets, re-embedding each:    {t_reembed:8.2f} s   "
          f"ratio re-embedding / reuse = {t_reembed / t_reuse:.2f}x")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
