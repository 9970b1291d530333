"""Training-step benchmark: our trainer vs the reference trainer, full-size random SI2 + ControlNet, CPU fp32.

``--base sd15-inpainting`` runs the same comparison on SD1.5 inpainting instead (a full-size random
stable-diffusion-inpainting folder, built from the released configs in ``models/generation/base_configs.py``): both
trainers are given that folder; ours reads the base from it, the reference's ``from_unet`` copies whatever UNet it is
given.

Both arms train the salient ControlNet (365 M parameters, from_unet of a full-size random 9-channel SD2-inpainting
UNet) at 512x512 (short side 768, random 512 crop -- the only size the reference runs at), batch 1, fp32, on the CPU,
with the same thread count, on the same synthetic photos + masks. Each arm runs in its own process; the seconds per
optimizer step are timed after ``--warmup`` steps, and the peak resident memory of the process (``ru_maxrss``) is
read when it exits (it exits right after the last timed step, before any final save). Arms: ``ours`` (default settings,
which include the exact caption-embedding cache: the text encoder leaves memory before the first step), ``ours-cached``
(``--latent-cache``: the VAE posteriors of 4 fixed crops per photo are computed before the first step -- by the first
cached run of the benchmark, which prints that time as "start to first step"; later cached runs reuse the files --
and the VAE then leaves memory), ``ours-lean`` (the same plus ``--gradient-checkpointing controlnet
--optimizer-in-backward --compact-heap``, run with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: the lowest peak memory),
``ours-lean-all`` (the same with ``--gradient-checkpointing all``, the UNet's activations recomputed too) and
``reference``.

Reference arm: ``train_controlnet.py`` of yahoo/photo-background-generation (the file holding the inpainting
trainer; the repo's two trainer names are swapped), run from a scratch copy OUTSIDE this repo (never committed):

    git clone https://github.com/yahoo/photo-background-generation /tmp/pbg       # or any copy
    pip install --target /tmp/pbg-deps "datasets==3.6.0" "pyarrow==20.0.0" "dill==0.3.8" opencv-python-headless \
        tensorboard                                  # its extra imports (datasets 5.2 + pyarrow 26 fail to pickle);
    # then delete from /tmp/pbg-deps what this venv already has (numpy, huggingface_hub, PIL...), or it shadows them
    python benchmarks/bench_train.py --reference /tmp/pbg --reference-pythonpath /tmp/pbg-deps
    # or a scratch venv that sees this one's packages: --reference-python /tmp/pbg-venv/bin/python

It needs ~14 GiB of memory (run nothing else heavy meanwhile) and the random pipeline takes ~5 GB of disk in
``--workdir`` (built once, reused). ``--arms ours`` runs our trainer alone. The arms run one after another, so on a
machine whose speed drifts (a shared VM: the same arm has measured 46.6 and 85.8 s/step in two runs) use
``--rounds 2``: every arm runs again, interleaved, and reports its fastest run and its highest peak.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_CACHE = "latent_cache_shared"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
REPO = os.path.dirname(HERE)


# ---------------------------------------------------------------------------------------------------------------
# fixtures: a full-size random SD2-inpainting folder and a few synthetic photos
# ---------------------------------------------------------------------------------------------------------------
def build_full_size_si2(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from sb_testkit.diffusers_models import save_si2_folder

    torch.manual_seed(0)
    t = time.perf_counter()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, sample_size=512, scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, architectures=["CLIPTextModel"],
    ))
    save_si2_folder(folder, unet, vae, text_encoder)
    print(f"built the full-size random SD2-inpainting folder in {time.perf_counter() - t:.0f} s: {folder}", flush=True)
    return folder


def build_full_size_base(folder: str, base: str) -> str:
    """A full-size random diffusers folder of ``base`` (SD2 as above; SD1.5 from its released configs)."""
    if base == "sd2-inpainting":
        return build_full_size_si2(folder)
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import conftest  # noqa: F401  (the repository as ``salient_background`` when it is not installed)
    from sb_testkit.diffusers_models import save_si2_folder

    from salient_background.models.generation.base_configs import full_size_configs

    if base != "sd15-inpainting":
        raise SystemExit(f"--base {base}: this benchmark builds sd2-inpainting or sd15-inpainting")
    configs = full_size_configs(base)
    torch.manual_seed(0)
    t = time.perf_counter()
    (_, text_config), = configs["text_encoders"]
    save_si2_folder(folder, UNet2DConditionModel.from_config(configs["unet"]), AutoencoderKL.from_config(configs["vae"]),
                    CLIPTextModel(CLIPTextConfig(**text_config, architectures=["CLIPTextModel"])))
    print(f"built the full-size random {base} folder in {time.perf_counter() - t:.0f} s: {folder}", flush=True)
    return folder


def build_photos(folder: str, count: int = 4) -> list[dict]:
    """``count`` 1024x768 photos (a bright ellipse on a smooth texture) with masks (object = white) and captions."""
    import numpy as np
    from PIL import Image, ImageDraw

    os.makedirs(folder, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(count):
        img_path, mask_path = os.path.join(folder, f"photo{i}.png"), os.path.join(folder, f"photo{i}_mask.png")
        if not os.path.isfile(mask_path):
            coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            photo = Image.fromarray(coarse).resize((1024, 768), Image.BILINEAR)
            mask = Image.new("L", (1024, 768), 0)
            box = (300 + 20 * i, 200, 700 + 10 * i, 600)
            ImageDraw.Draw(photo).ellipse(box, fill=(230, 60, 40))
            ImageDraw.Draw(mask).ellipse(box, fill=255)
            photo.save(img_path)
            mask.save(mask_path)
        rows.append({"image": img_path, "mask": mask_path, "caption": f"a red bottle on a table, photo {i}"})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# children
# ---------------------------------------------------------------------------------------------------------------
def _time_optimizer_steps(total: int, out_json: str) -> None:
    """Record the time of every learning-rate-scheduler step (once per optimizer step in both trainers, also when
    ours steps the optimizer inside the backward); exit the process right after step ``total``."""
    import torch

    stamps: list[float] = []
    started = time.perf_counter()
    original = torch.optim.lr_scheduler.LRScheduler.step

    def step(self, *a, **k):
        constructing = self._step_count == 0  # the scheduler's own initial step, made when it is created
        result = original(self, *a, **k)
        if constructing:
            return result
        stamps.append(time.perf_counter())
        if len(stamps) >= total:
            with open(out_json, "w") as fh:
                json.dump({"stamps": stamps, "started": started}, fh)
            sys.stdout.flush()
            os._exit(0)
        return result

    torch.optim.lr_scheduler.LRScheduler.step = step


def child_ours(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from salient_background.training.data import write_manifest
    from salient_background.training.train import TrainConfig, train

    rows = build_photos(os.path.join(args.workdir, "photos"))
    data = os.path.join(args.workdir, "ours_data")
    os.makedirs(data, exist_ok=True)
    write_manifest(os.path.join(data, "manifest.jsonl"), [
        {"image": os.path.relpath(r["image"], data), "mask": os.path.relpath(r["mask"], data), "captions": [r["caption"]]}
        for r in rows])
    cached = args._child in ("ours-cached", "ours-lean", "ours-lean-all")
    run_dir = os.path.join(args.workdir, f"{args._child}_{os.path.basename(args.si2)}_run")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run
    shared_cache = os.path.join(args.workdir, f"{SHARED_CACHE}_{os.path.basename(args.si2)}")
    if cached and os.path.isdir(shared_cache):  # built (and timed) by this benchmark's first cached run
        shutil.copytree(shared_cache, os.path.join(run_dir, "latent_cache"))
    _time_optimizer_steps(args.steps, args.out)
    lean = args._child in ("ours-lean", "ours-lean-all")
    checkpointing = "all" if args._child == "ours-lean-all" else "controlnet" if lean else "off"
    train(TrainConfig(data=data, base_model=args.si2, output_dir=run_dir,
                      batch_size=1, learning_rate=5e-6, max_train_steps=args.steps + 1, checkpointing_steps=0,
                      report_to="none", log_every=1, seed=0, latent_cache=cached,
                      gradient_checkpointing=checkpointing, optimizer_in_backward=lean,
                      compact_heap=lean))


def child_reference(args) -> None:
    import runpy

    import torch

    torch.set_num_threads(args.threads)
    import datasets

    rows = build_photos(os.path.join(args.workdir, "photos"))

    def load_dataset(*_a, **_k):  # the photos as the reference expects them: image, conditioning image (mask), text
        ds = datasets.Dataset.from_dict({"image": [r["image"] for r in rows],
                                         "conditioning_image": [r["mask"] for r in rows],
                                         "text": [r["caption"] for r in rows]})
        ds = ds.cast_column("image", datasets.Image()).cast_column("conditioning_image", datasets.Image())
        return datasets.DatasetDict({"train": ds})

    datasets.load_dataset = load_dataset
    _time_optimizer_steps(args.steps, args.out)
    script = os.path.join(args.reference, "train_controlnet.py")
    sys.argv = [script, "--pretrained_model_name_or_path", args.si2, "--train_data_dir", "unused",
                "--image_column", "image", "--conditioning_image_column", "conditioning_image", "--caption_column", "text",
                "--resolution", "512", "--train_batch_size", "1", "--learning_rate", "5e-6",
                "--max_train_steps", str(args.steps + 1), "--checkpointing_steps", "100000",
                "--output_dir", os.path.join(args.workdir, "reference_run"), "--seed", "0", "--report_to", "tensorboard"]
    sys.path.insert(0, args.reference)
    runpy.run_path(script, run_name="__main__")


# ---------------------------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------------------------
def run_arm(name: str, args) -> dict:
    out = os.path.join(args.workdir, f"{name}_times.json")
    if os.path.exists(out):
        os.remove(out)
    python = args.reference_python if name == "reference" and args.reference_python else sys.executable
    cmd = [python, os.path.abspath(__file__), "--_child", name, "--workdir", args.workdir, "--si2", args.si2,
           "--steps", str(args.steps), "--threads", str(args.threads), "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if name in ("ours-lean", "ours-lean-all"):  # --compact-heap's fresh pages come as transparent huge pages: 4x fewer page faults
        env["GLIBC_TUNABLES"] = HUGE_PAGES_TUNABLE
    if name == "reference":
        cmd += ["--reference", args.reference]
        if args.reference_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([args.reference_pythonpath, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if not os.path.isfile(out):
        raise SystemExit(f"{name} arm failed (exit status {status}); see its output above")
    built = os.path.join(args.workdir, f"{name}_{os.path.basename(args.si2)}_run", "latent_cache")
    shared = os.path.join(args.workdir, f"{SHARED_CACHE}_{os.path.basename(args.si2)}")
    if os.path.isdir(built) and not os.path.isdir(shared):  # later cached runs reuse it
        shutil.copytree(built, shared)
    record = json.load(open(out))
    stamps = record["stamps"]
    measured = [b - a for a, b in zip(stamps[args.warmup - 1:], stamps[args.warmup:])]
    return {"arm": name, "seconds_per_step": sum(measured) / len(measured), "steps_timed": len(measured),
            "step_times": [round(x, 2) for x in measured], "peak_rss_gib": usage.ru_maxrss / 2**20, "wall_s": wall,
            "to_first_step_s": stamps[0] - record["started"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_train")
    p.add_argument("--reference", help="scratch copy of yahoo/photo-background-generation (outside this repo)")
    p.add_argument("--reference-pythonpath", help="extra import path for the reference's dependencies (datasets, cv2)")
    p.add_argument("--reference-python", help="interpreter for the reference arm (a scratch venv with its dependencies)")
    p.add_argument("--arms", default="ours,ours-cached,ours-lean,reference",
                   help="ours = default settings; ours-cached = --latent-cache (the first cached run builds the "
                        "cache before its first step: see 'start to first step'; later ones reuse it); ours-lean = "
                        "ours-cached + --gradient-checkpointing controlnet --optimizer-in-backward --compact-heap; "
                        "ours-lean-all = the same with --gradient-checkpointing all; reference = yahoo's trainer")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per arm (the first --warmup are not timed)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every arm this many times, interleaved (ours, reference, ours, ...); each arm reports "
                        "its fastest run and its highest peak -- on a machine whose speed drifts, use 2 or more")
    p.add_argument("--reuse-latent-cache", action="store_true",
                   help="keep the latent cache an earlier run of this benchmark built (its build is then not timed)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--base", default="sd2-inpainting", choices=["sd2-inpainting", "sd15-inpainting"],
                   help="the inpainting base both trainers train on (a full-size random folder of it)")
    p.add_argument("--si2", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        (child_reference if args._child == "reference" else child_ours)(args)
        return
    if args.steps <= args.warmup:
        raise SystemExit("--steps must exceed --warmup")
    os.makedirs(args.workdir, exist_ok=True)
    args.si2 = build_full_size_base(os.path.join(args.workdir, f"{args.base}-random"), args.base)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if "reference" in arms and not args.reference:
        raise SystemExit("--reference DIR (a scratch copy of yahoo/photo-background-generation) is needed, or --arms ours")
    if not args.reuse_latent_cache:
        shutil.rmtree(os.path.join(args.workdir, f"{SHARED_CACHE}_{os.path.basename(args.si2)}"),
                      ignore_errors=True)  # the first cached run builds it
    runs: dict[str, list] = {}
    for round_no in range(1, args.rounds + 1):  # arms interleaved round by round
        for arm in arms:
            r = run_arm(arm, args)
            runs.setdefault(arm, []).append(r)
            print(f"round {round_no} {arm:12s} {r['seconds_per_step']:.2f} s/step over {r['steps_timed']} steps "
                  f"{r['step_times']} (after {args.warmup} warm-up), peak RSS {r['peak_rss_gib']:.2f} GiB, "
                  f"start to first step {r['to_first_step_s']:.0f} s, wall {r['wall_s']:.0f} s", flush=True)
    # each arm: its fastest run's time, its highest peak
    results = {arm: dict(min(rs, key=lambda r: r["seconds_per_step"]), peak_rss_gib=max(r["peak_rss_gib"] for r in rs))
               for arm, rs in runs.items()}
    if "reference" in results:
        ref = results["reference"]
        for arm in (a for a in results if a != "reference"):
            o = results[arm]
            print(f"ratio {arm}/reference: time {o['seconds_per_step'] / ref['seconds_per_step']:.3f}x, "
                  f"peak memory {o['peak_rss_gib'] / ref['peak_rss_gib']:.3f}x  "
                  f"({args.base}, threads {args.threads}, CPU fp32, 512x512, batch 1, best of {args.rounds} round(s))")


if __name__ == "__main__":
    main()
