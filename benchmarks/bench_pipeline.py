"""Benchmark: our diffusers pipeline (SI2 + salient ControlNet) on FULL-SIZE random weights, on the CPU.

Prints absolute times of every arm and their ratios, measured in the same run with the same threads and warm-up. A
step's time is the fastest of steps 2.. of an image (step 1 also holds the encodes / model loading), best of
``--repeats`` alternating images: on a shared machine other load only ever adds time.

1. with ``--comfyui PATH`` (a ComfyUI checkout; ``--comfyui-python`` an interpreter that has ComfyUI's requirements
   and this pack): seconds per sampling step in ComfyUI with the salient ControlNet (our loader + our conditioning
   node, then ComfyUI's own sampler) and without it (the same conditioning with the control removed: plain
   inpainting) -- goal <= 1.40x (at 256x256 the ControlNet is ~0.35 of a UNet forward in FLOPs). This arm runs in
   a child process of that interpreter on full-size random single-file checkpoints written by
   ``tests/integration/make_full_size_models.py`` (``--comfyui-models DIR``, built there when missing);
2. seconds per sampling step of our diffusers pipeline with the ControlNet (scale 1.0) and without it (scale 0, the
   SI2 baseline; the ControlNet is then not run) -- the same goal;
3. with ``--reference PATH`` (a local copy of yahoo's ``pipeline_controlnet_inpaint.py``, never part of this
   repository): seconds per image of our pipeline vs the reference pipeline on the same modules, seed and inputs --
   goal <= 1.0x -- and the max difference of their images.

Full-size architectures from the released configs (``models/generation/base_configs.py``), ``--base``:
``sd2-inpainting`` (default): the SD2-inpainting UNet (9 input channels, ~866 M parameters), the ControlNet made from
it (every tensor redrawn at random, ~364 M), the OpenCLIP ViT-H text tower as a ``CLIPTextModel`` (~340 M) and the SD
VAE (~84 M); ``sd15-inpainting``: the SD1.5-inpainting UNet (~860 M), its ControlNet (~361 M), the CLIP ViT-L text
tower (~123 M) and the same VAE, the ComfyUI arm then on the SD1.5 files of ``tests/integration/make_base_models.py``
(default folder <tmp>/sb_base_models). fp32 needs ~7 GiB of memory: run it under ``flock /tmp/heavy.lock``.

    flock /tmp/heavy.lock python benchmarks/bench_pipeline.py --size 256 --steps 4 --threads 2 [--reference PATH] \
        [--comfyui /path/to/ComfyUI --comfyui-python /path/to/comfy/venv/bin/python] [--base sd15-inpainting]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BASES = ("sd2-inpainting", "sd15-inpainting")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the test kit's tokenizer and randomiser


def full_size_components(base: str = "sd2-inpainting", seed: int = 0):
    """UNet, its salient ControlNet, VAE, text encoder (from the released configs, random weights), tokenizer, scheduler."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from salient_background.models.generation.base_configs import full_size_configs
    from sb_testkit.diffusers_models import randomize_all_tensors, sd2_scheduler_config, write_toy_tokenizer

    configs = full_size_configs(base)
    (encoder_class, encoder_config), = configs["text_encoders"]  # SD2 and SD1.5 have one text encoder
    if encoder_class != "CLIPTextModel":
        raise SystemExit(f"{base}: only bases with one CLIPTextModel text encoder are benchmarked here")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"]).eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256))
    randomize_all_tensors(controlnet, seed + 1, std=0.02).eval()
    vae = AutoencoderKL.from_config(configs["vae"]).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**encoder_config)).eval()
    with tempfile.TemporaryDirectory(prefix="bench_tok_") as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_toy_tokenizer(folder))
    # SD1.5 inpainting ships PNDM with the same scaled-linear betas and epsilon prediction: one UniPC config fits both
    scheduler = UniPCMultistepScheduler.from_config(sd2_scheduler_config())
    return unet, controlnet, vae, text_encoder, tokenizer, scheduler


def inputs(size: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 4) ** 2).astype(np.uint8) * 255
    return Image.fromarray(photo), Image.fromarray(mask)


def load_reference(path: str):
    import diffusers.models.controlnets.multicontrolnet as multicontrolnet

    sys.modules.setdefault("diffusers.pipelines.controlnet.multicontrolnet", multicontrolnet)  # the one import shim
    spec = importlib.util.spec_from_file_location("reference_pipeline_controlnet_inpaint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StableDiffusionControlNetInpaintPipeline


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI arm: runs in a child process of the ComfyUI interpreter
# ---------------------------------------------------------------------------------------------------------------
def comfy_files(base: str) -> dict:
    """The test kit's script that writes ``base``'s full-size random ComfyUI files (cached in its output folder), that
    folder's default and the checkpoint and salient ControlNet in it."""
    integration = os.path.join(os.path.dirname(HERE), "tests", "integration")
    if base == "sd2-inpainting":
        return {"maker": os.path.join(integration, "make_full_size_models.py"), "folder": "sb_full_size_models",
                "checkpoint": "sd2_inpainting_random.safetensors", "controlnet": "controlnet_salient.safetensors"}
    sys.path.insert(0, integration)
    from make_base_models import CHECKPOINTS, CONTROLNETS  # noqa: E402  (imports nothing heavy)

    kind = {"sd15-inpainting": "sd15"}[base]
    return {"maker": os.path.join(integration, "make_base_models.py"), "folder": "sb_base_models",
            "checkpoint": CHECKPOINTS[kind], "controlnet": CONTROLNETS[kind]}


def comfy_child(args) -> None:
    """Seconds per sampling step in ComfyUI with and without the salient ControlNet; prints one JSON line."""
    sys.path.insert(0, args.comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    torch.set_num_threads(args.threads)
    import comfy.sample
    import comfy.sd
    import nodes as comfy_nodes  # ComfyUI's own nodes.py

    from salient_background.nodes.controlnet_nodes import SalientControlNetConditioning, load_salient_controlnet

    files = comfy_files(args.base)
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        os.path.join(args.comfyui_models, files["checkpoint"]), output_vae=True, output_clip=True)[:3]
    control_net = load_salient_controlnet(os.path.join(args.comfyui_models, files["controlnet"]))
    positive = comfy_nodes.CLIPTextEncode().encode(clip, "a bottle on a table")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    photo, object_mask = inputs(args.size)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0)[None]
    mask = torch.from_numpy(np.asarray(object_mask, dtype=np.float32) / 255.0)[None]
    with_cn = SalientControlNetConditioning().apply(positive, negative, control_net, vae, image, mask, strength=1.0)
    pos_cn, neg_cn, latent = with_cn
    if not all("control" in entry[1] for entry in pos_cn + neg_cn):
        raise SystemExit("the salient conditioning carries no ControlNet: nothing to measure")
    # the baseline: the very same inpainting conditioning (masked-image latent + mask) with the control removed
    strip = lambda cond: [[t, {k: v for k, v in d.items() if k != "control"}] for t, d in cond]  # noqa: E731
    pos_plain, neg_plain = strip(pos_cn), strip(neg_cn)
    latent_image = latent["samples"]

    def run(positive, negative):
        noise = comfy.sample.prepare_noise(latent_image, 1)
        stamps = [time.perf_counter()]
        comfy.sample.sample(model, noise, args.steps, 7.5, "euler", "normal", positive, negative, latent_image,
                            denoise=1.0, disable_pbar=True, seed=1,
                            callback=lambda *_: stamps.append(time.perf_counter()))
        return float(np.min(np.diff(stamps)[1:]))  # step 1 also holds model loading / preparation

    with torch.inference_mode():
        run(pos_cn, neg_cn)  # warm-up: loads both models
        run(pos_plain, neg_plain)
        times = {"with": [], "without": []}
        for _ in range(args.repeats):  # alternating, like the other arms
            times["with"].append(run(pos_cn, neg_cn))
            times["without"].append(run(pos_plain, neg_plain))
    print("COMFY_RESULT " + json.dumps({"with": min(times["with"]), "without": min(times["without"]),
                                        "all": times, "threads": torch.get_num_threads()}), flush=True)


def run_comfy_arm(args) -> dict:
    here = os.path.abspath(__file__)
    make = comfy_files(args.base)["maker"]
    subprocess.run([args.comfyui_python, make, args.comfyui, args.comfyui_models], check=True)  # skipped when built
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [args.comfyui_python, here, "--_comfy-child", "--base", args.base, "--comfyui", args.comfyui, "--comfyui-models",
           args.comfyui_models, "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("COMFY_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the ComfyUI arm failed (exit status {proc.returncode})")
    return json.loads(lines[-1][len("COMFY_RESULT "):])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", choices=BASES, default="sd2-inpainting",
                        help="inpainting base of every arm (default sd2-inpainting)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per image (default 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed images per arm after one warm-up (default 3)")
    parser.add_argument("--reference", help="local copy of yahoo's pipeline_controlnet_inpaint.py (optional)")
    parser.add_argument("--comfyui", help="a ComfyUI checkout: adds the ComfyUI with/without-ControlNet arm")
    parser.add_argument("--comfyui-python", default=sys.executable,
                        help="interpreter with ComfyUI's requirements and this pack (default: this one)")
    parser.add_argument("--comfyui-models",
                        help="full-size random checkpoints, built there when missing (default: <tmp>/sb_full_size_models "
                             "by make_full_size_models.py for SD2, <tmp>/sb_base_models by make_base_models.py for SD1.5)")
    parser.add_argument("--_comfy-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.comfyui and not args.comfyui_models:
        args.comfyui_models = os.path.join(tempfile.gettempdir(), comfy_files(args.base)["folder"])
    return args


def main() -> None:
    args = parse_args()
    if args._comfy_child:
        comfy_child(args)
        return
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]  # the machine may be shared: the run states its load
    if args.base != "sd2-inpainting":  # the SD2 run's lines stay as they were
        print(f"base {args.base}: full-size architecture, random weights", flush=True)
    if args.comfyui:  # first, in its own process, before this one holds ~7 GiB of models
        comfy = run_comfy_arm(args)
        print(f"ComfyUI, s/step (euler, fastest of steps 2.., best of {args.repeats}): with ControlNet "
              f"{comfy['with']:.3f}, without {comfy['without']:.3f}, ratio {comfy['with'] / comfy['without']:.3f} "
              f"(goal <= 1.40); threads {comfy['threads']}", flush=True)

    from PIL import ImageOps

    from salient_background.models.generation.pipeline import SalientBackgroundPipeline

    t0 = time.perf_counter()
    unet, controlnet, vae, text_encoder, tokenizer, scheduler = full_size_components(args.base)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"built full-size random models in {time.perf_counter() - t0:.1f} s: UNet {count(unet):.0f} M, "
          f"ControlNet {count(controlnet):.0f} M, text encoder {count(text_encoder):.0f} M, VAE {count(vae):.0f} M")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.size}x{args.size}, {args.steps} steps, "
          f"CFG 7.5, UniPC, fp32, CPU")
    ours = SalientBackgroundPipeline(vae, text_encoder, tokenizer, unet, scheduler, controlnet=controlnet)
    photo, object_mask = inputs(args.size)

    def run_ours(scale: float):
        stamps = [time.perf_counter()]
        start = stamps[0]
        out = ours(photo, object_mask, "a bottle on a table", num_inference_steps=args.steps, show_progress=False,
                   controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(1),
                   callback=lambda i, n: stamps.append(time.perf_counter()))
        steps = np.diff(stamps)[1:]  # step 1 also holds text encoding and the VAE encode; steps 2.. are pure sampling
        return time.perf_counter() - start, float(np.min(steps)), out.images

    ref = None
    if args.reference:
        Ref = load_reference(args.reference)
        ref = Ref(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
                  scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        ref.set_progress_bar_config(disable=True)
    inverted = ImageOps.invert(object_mask)

    def run_ref():
        start = time.perf_counter()
        images = ref(prompt="a bottle on a table", image=photo, mask_image=inverted, control_image=inverted,
                     num_inference_steps=args.steps, controlnet_conditioning_scale=1.0, output_type="np",
                     generator=torch.Generator().manual_seed(1)).images
        return time.perf_counter() - start, images

    with torch.inference_mode():
        run_ours(1.0)  # warm-up
        if ref is not None:
            run_ref()
        # the arms alternate (ours with ControlNet, ours without, reference) so a change of machine load hits all alike
        runs = {"ours1": [], "ours0": [], "ref": []}
        for _ in range(args.repeats):
            runs["ours1"].append(run_ours(1.0))
            runs["ours0"].append(run_ours(0.0))
            if ref is not None:
                runs["ref"].append(run_ref())
        with_cn = min(r[1] for r in runs["ours1"])
        without_cn = min(r[1] for r in runs["ours0"])
        image1, image0 = min(r[0] for r in runs["ours1"]), min(r[0] for r in runs["ours0"])
        print(f"our pipeline, s/step (fastest of steps 2.., best of {args.repeats}): with ControlNet {with_cn:.3f}, "
              f"without (scale 0) {without_cn:.3f}, ratio {with_cn / without_cn:.3f} (goal <= 1.40)")
        print(f"our pipeline, s/image: with ControlNet {image1:.2f}, without {image0:.2f}")
        if ref is not None:
            ref_time = min(r[0] for r in runs["ref"])
            diff = float(np.abs(runs["ref"][0][1] - runs["ours1"][0][2]).max())
            print(f"per image (scale 1.0, best of {args.repeats}): ours {image1:.2f} s, reference {ref_time:.2f} s, "
                  f"ratio {image1 / ref_time:.3f} (goal <= 1.0); max |ours - reference| = {diff:.3g}")
            print("all runs, s/image: " + "; ".join(f"{k} " + ", ".join(f"{r[0]:.1f}" for r in v) for k, v in runs.items()))
    print(f"load average (1 min): {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
