"""Command line of the training subpackage: ``prepare``, ``train``, ``export``.

One implementation, two entry points: ``python -m salient_background.training <command>`` (also under
``accelerate launch -m salient_background.training train ...`` / ``torchrun``) and the pack's main command line,
``python -m salient_background training <command>`` (``commands/training.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging


log = logging.getLogger("salient_background")


def add_commands(subparsers) -> None:
    """Register prepare / train / export on an argparse subparsers object."""
    _add_prepare(subparsers)
    _add_train(subparsers)
    _add_export(subparsers)


# ---------------------------------------------------------------------------------------------------------------
def _add_prepare(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="salient masks + captions + manifest for training",
        description="Build (or complete: it is resumable) a training dataset folder: salient masks of the photos, "
                    "captions (sidecar .txt, COCO JSON, or BLIP-2 from a local folder), manifest.jsonl/.csv. "
                    "Launch with torchrun --nproc_per_node N to split the work over N processes.",
    )
    p.add_argument("output_dir", help="the dataset folder to write (masks/, manifest, rejected.jsonl)")
    p.add_argument("--images", action="append", default=[], metavar="DIR", help="a folder of photos (any nesting); repeatable")
    p.add_argument("--coco-captions", metavar="JSON", help="COCO captions annotations (e.g. captions_train2017.json)")
    p.add_argument("--coco-images", metavar="DIR", help="the folder the COCO file_names are relative to")
    p.add_argument("--salient-checkpoint", help="InSPyReNet checkpoint (ckpt_base.pth) for the masks")
    p.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="base = the paper's setting")
    p.add_argument("--masks-dir", help="use existing masks instead (object = white; same relative path, .png)")
    p.add_argument("--blip2", metavar="DIR", help="local BLIP-2 model folder: caption photos that have no caption")
    p.add_argument("--manifest", default="manifest.jsonl", help="manifest file name: .jsonl (default) or .csv")
    p.add_argument("--batch-size", type=int, default=8, help="photos per salient-model batch (same-size photos batch)")
    p.add_argument("--min-area", type=float, default=0.005, help="reject masks covering less than this fraction")
    p.add_argument("--max-area", type=float, default=0.95, help="reject masks covering more than this fraction")
    p.add_argument("--copy-images", action="store_true", help="copy the photos into the dataset folder (self-contained)")
    p.add_argument("--retry-rejected", action="store_true", help="process previously rejected photos again")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available; per process LOCAL_RANK under torchrun)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)


def run_prepare(args) -> int:
    import os

    import torch

    from .prepare import Blip2Captioner, prepare_dataset

    segmenter = None
    device = args.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    device = torch.device(device or "cpu")
    if args.salient_checkpoint and not args.masks_dir:
        from ..models.precision import resolve_dtype
        from ..models.networks.salient import load_salient_model

        segmenter = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device,
                                       dtype=resolve_dtype("auto", device))
    captioner = Blip2Captioner(args.blip2, device=str(device)) if args.blip2 else None
    report = prepare_dataset(
        args.output_dir, image_dirs=args.images, coco_annotations=args.coco_captions, coco_images=args.coco_images,
        segmenter=segmenter, masks_dir=args.masks_dir, captioner=captioner, manifest_name=args.manifest,
        batch_size=args.batch_size, min_area=args.min_area, max_area=args.max_area, copy_images=args.copy_images,
        retry_rejected=args.retry_rejected, progress=not args.quiet,
    )
    print(json.dumps(report.as_dict(), indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------------------------
_HELP = {
    "data": "manifest (.jsonl/.csv) or the dataset folder from `prepare`",
    "base_model": "local diffusers folder of the inpainting model (SD2: stabilityai/stable-diffusion-2-inpainting, "
                  "also its single file; SD1.5: stable-diffusion-v1-5/stable-diffusion-inpainting; SDXL: "
                  "diffusers/stable-diffusion-xl-1.0-inpainting-0.1)",
    "base": "the inpainting base: sd2-inpainting, sd15-inpainting or sdxl-inpainting; read from --base-model's "
            "unet/config.json when not given (an error when they disagree)",
    "vae": "a VAE folder to use instead of the base model's, e.g. an fp16-safe SDXL VAE (SDXL's own runs in fp32 "
           "under --mixed-precision fp16)",
    "resolution": "square training crop in pixels (default: the base's, 512; SDXL 1024)",
    "resize_to": "short side of each photo before the crop (default: 768 for SD2/SD1.5 as the paper; SDXL: the "
                 "resolution, with each crop's original size and offset given to the UNet as SDXL expects)",
    "output_dir": "where checkpoints, validation images, logs and the exported controlnet/ go",
    "controlnet": "fine-tune from this ControlNet (folder, .safetensors, .pth; of the same base); default: from_unet "
                  "of the base's UNet",
    "conditioning_channels": "conditioning-embedding widths of a new ControlNet (4 values; the paper: 16 32 96 256)",
    "learning_rate": "the reference's stated value 5e-6 (its code's intent may have been 1e-5)",
    "batch_size": "samples per process per micro-step (the reference: 4)",
    "mixed_precision": "no, fp16 or bf16 (frozen models are cast to it; the ControlNet trains in fp32)",
    "resume_from": "'latest' or a checkpoints/checkpoint-<step> folder",
    "skip_bad_rows": "train on the manifest rows whose files are fine and list the others (missing, unreadable, mask "
                     "of another size than its photo) in <output-dir>/skipped_rows.csv; without it such rows stop the "
                     "run before any model is loaded",
    "mask_aug_prob": "probability of the SmartBrush-style mask-precision augmentation (0 = off, the reference)",
    "ema_decay": "EMA decay of the ControlNet weights (0 = off; e.g. 0.9999); exported weights are the EMA ones",
    "validation_steps": "validation images every N steps (0 = never)",
    "validation_sam": "SAM checkpoint: also compute the object-expansion score in validation",
    "validation_metrics": "the comparison table (as evaluate --runs) on held-out rows at each validation: 'all' "
                          "(every metric whose model is on disk) or names such as expansion,fid,clip_score; logged to "
                          "validation.jsonl and TensorBoard",
    "validation_holdout": "with --validation-metrics: the manifest's last N rows are held out of training",
    "validation_metric_seeds": "with --validation-metrics: images per held-out input (LPIPS diversity needs 2)",
    "validation_bootstrap": "with --validation-metrics: bootstrap resamples of the held-out inputs",
    "validation_models_dir": "with --validation-metrics: a models folder holding metrics/ (default: ComfyUI's)",
    "stop_after_steps": "end this session after N steps, resumable (time-boxed jobs)",
    "report_to": "auto (TensorBoard when installed), tensorboard or none",
    "gradient_checkpointing": "recompute activations in the backward: 'controlnet' or 'all' (the flag alone); less "
                              "memory for more time per step",
    "optimizer_in_backward": "step each ControlNet weight as soon as its gradient is complete and free it (exactly the "
                             "same training; ~1.4 GiB less at full size for one more ControlNet backward per step; "
                             "single process, no accumulation, not with fp16)",
    "compact_heap": "Linux/glibc: return freed memory to the system at once (~1 GiB lower peak on the CPU at full "
                    "size, ~25%% more time per step)",
    "text_embedding_cache": "embed each distinct caption once and free the text encoder (exact; skipped when the "
                            "captions' table would outweigh the encoder); --no-text-embedding-cache turns it off",
    "latent_cache": "VAE-encode --latent-cache-crops fixed crops per photo once, then train without the VAE "
                    "(fastest; the random crop is drawn among those K)",
}


def _add_train(subparsers) -> None:
    from .config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train the salient-aware ControlNet (accelerate)",
        description="Train the salient-aware ControlNet on a prepared dataset. Single process as is; several GPUs / "
                    "nodes with `accelerate launch -m salient_background.training train ...` (DeepSpeed/FSDP through "
                    "`accelerate config`).",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = _HELP.get(f.name, "") + (f" (default: {default})" if default not in (None, [], "") else "")
        if f.name in ("data", "base_model"):
            p.add_argument(flag, required=True, help=help_text)
        elif isinstance(default, bool):  # on-by-default switches also get --no-<name>
            p.add_argument(flag, action=argparse.BooleanOptionalAction if default else "store_true", default=default,
                           help=help_text)
        elif isinstance(default, (list, tuple)):
            kind = int if f.name == "conditioning_channels" else str
            p.add_argument(flag, nargs="+", type=kind, default=list(default), help=help_text)
        elif f.name in ("max_train_steps", "checkpoints_total_limit", "stop_after_steps", "resolution", "resize_to"):
            p.add_argument(flag, type=int, default=default, help=help_text)
        elif f.name == "base":
            from ..models.bases import BASES

            p.add_argument(flag, choices=list(BASES), default=None, help=help_text)
        elif f.name == "num_train_epochs":
            p.add_argument(flag, type=float, default=default, help=help_text)
        elif f.name == "gradient_checkpointing":
            from .config import CHECKPOINTING_CHOICES

            p.add_argument(flag, nargs="?", const="all", choices=CHECKPOINTING_CHOICES, default=default,
                           help=help_text)
        elif f.name == "mixed_precision":
            p.add_argument(flag, choices=["no", "fp16", "bf16"], default=default, help=help_text)
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, type=kind, default=default, help=help_text)
    p.set_defaults(func=run_train)


def config_from_args(args):
    from .config import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["conditioning_channels"] = tuple(values["conditioning_channels"])
    return TrainConfig(**values)


def run_train(args) -> int:
    from .train import train

    result = train(config_from_args(args))
    if result.export_dir:
        print(f"trained {result.global_step} steps; ControlNet exported to {result.export_dir}")
    else:
        print(f"stopped at step {result.global_step}; resume with --resume-from latest")
    return 0


# ---------------------------------------------------------------------------------------------------------------
def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="a training checkpoint -> the diffusers ControlNet folder the loader node reads",
        description="Write config.json + diffusion_pytorch_model.safetensors (+ salient_controlnet.json metadata) "
                    "from a training checkpoint, then check that it loads through the loader node's code.",
    )
    p.add_argument("checkpoint", help="a checkpoints/checkpoint-<step> folder, or a training output folder (latest)")
    p.add_argument("output", help="the folder to write (e.g. ComfyUI/models/controlnet/salient_mine)")
    p.add_argument("--fp16", action="store_true", help="store fp16 weights (half the size)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--select-best", action="store_true",
                   help="CHECKPOINT is a training output folder: export its checkpoint with the lowest held-out "
                        "expansion among those whose FID stays within --fid-margin of the baseline's (needs a run "
                        "trained with --validation-metrics)")
    p.add_argument("--fid-margin", type=float, default=0.05,
                   help="--select-best: how far above the baseline's FID a checkpoint may be, as a fraction "
                        "(default 0.05 = 5 %%)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from .export import export_checkpoint, select_best_checkpoint

    checkpoint = args.checkpoint
    if args.select_best:
        checkpoint, choice = select_best_checkpoint(args.checkpoint, args.fid_margin)
        best = choice["chosen"]
        print(f"best checkpoint: step {best['step']} (held-out expansion {100 * best['expansion_relative']:.2f} %, "
              f"FID {best['fid']:.4g} <= {choice['fid_limit']:.4g}, baseline {choice['baseline_fid']:.4g}; "
              f"{len(choice['candidates'])} candidates)")
    folder = export_checkpoint(checkpoint, args.output, fp16=args.fp16, ema=args.ema)
    print(f"exported to {folder} (verified: it loads through the loader node's code)")
    return 0


# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salient_background.training",
                                     description="Train the salient-aware ControlNet: prepare -> train -> export.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="<prepare|train|export>")
    sub.required = True
    add_commands(sub)
    return parser


def main(argv=None) -> int:
    from ..cli import run_parsed

    return run_parsed(build_parser().parse_args(argv))
