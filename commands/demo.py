"""``python -m salient_background demo``: the main job on the example photo shipped in the repository, in one command.

Runs ``mask`` -> ``generate`` -> ``evaluate`` on ``workflows/inputs/example_product.png`` with the models in
``--models-dir`` (default ``outputs/models``, laid out as ComfyUI's models folder), writing into ``--output-dir``
(default ``outputs/demo``): ``mask/`` (the object mask and cut-out), ``generate/`` (framed input, mask, the new
picture in ``generated/`` and ``manifest.csv``) and ``evaluate/`` (``expansion.csv``, ``summary.json``).

SD2 inpainting is read from the single file ComfyUI uses (``checkpoints/512-inpainting-ema.safetensors`` plus its
small config folder). Missing models are fetched only with ``--download``; without it the command lists what is
missing and prints the command that fetches it. Each step is the command of the same name, run with the arguments
its own parser reads.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..models.errors import InputError, UserFacingError
from .common import ensure_output_dir

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_PHOTO = os.path.join(PACK_ROOT, "workflows", "inputs", "example_product.png")
DEFAULT_PROMPT = "a glass bottle on a wooden table in a sunny kitchen"
SELECTION = "demo"  # the registry's selection of what the demo needs (models/model_files/model_registry.py ALIASES)
# registry key prefix -> the option that replaces those files
OVERRIDDEN_BY = {"sd2_inpainting": "si2", "si2_": "si2", "controlnet": "controlnet", "inspyrenet": "salient_checkpoint",
                 "sam_": "sam"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job in one command: mask -> generate -> evaluate on the shipped example photo",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models-dir", default=os.path.join("outputs", "models"),
                        help="models folder in ComfyUI's layout (default outputs/models; ComfyUI/models works too)")
    parser.add_argument("--output-dir", default=os.path.join("outputs", "demo"), help="default outputs/demo")
    parser.add_argument("--download", action="store_true",
                        help="fetch the missing models first (about 7.4 GB when none is there; verified, resumable)")
    parser.add_argument("--photo", default=EXAMPLE_PHOTO, help="the photo (default: the shipped example)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"background description (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20, the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--size", type=int, default=512, help="canvas size (default 512)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto = fp16 on CUDA, fp32 otherwise")
    override = parser.add_argument_group("model overrides (instead of the files in --models-dir)")
    override.add_argument("--si2", help="SD2 inpainting: single file (.safetensors/.ckpt) or diffusers folder")
    override.add_argument("--controlnet", help="salient ControlNet: folder, .safetensors or .pth")
    override.add_argument("--salient-checkpoint", help="InSPyReNet checkpoint")
    override.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="its mode (default base)")
    override.add_argument("--sam", help="SAM checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def default_model_paths(models_dir: str) -> dict[str, str]:
    """Where the demo finds each model in a ComfyUI-style models folder (what ``download demo`` writes)."""
    join = os.path.join
    return {
        "si2": join(models_dir, "checkpoints", "512-inpainting-ema.safetensors"),
        "controlnet": join(models_dir, "controlnet", "photo-background-generation"),
        "salient_checkpoint": join(models_dir, "salient", "ckpt_base.pth"),
        "sam": join(models_dir, "sams", "sam_vit_b_01ec64.pth"),
    }


def missing_files(args) -> list:
    """Registry rows of the demo's selection that are not in ``--models-dir`` and not replaced by an override."""
    from ..models.model_files.model_registry import FOLDER_DEFAULT_SUBDIRS, select

    missing = []
    for entry in select([SELECTION]):
        option = next(o for prefix, o in OVERRIDDEN_BY.items() if entry.key.startswith(prefix))
        path = os.path.join(args.models_dir, FOLDER_DEFAULT_SUBDIRS[entry.folder], *entry.filename.split("/"))
        if getattr(args, option) is None and not os.path.isfile(path):
            missing.append(entry)
    return missing


def download_command(models_dir: str) -> str:
    return f"python -m salient_background download {SELECTION} --models-dir {shlex.quote(models_dir)}"


def run_step(argv: list[str]) -> None:
    """Run another command exactly as ``python -m salient_background <argv>`` would (its own parser, its run)."""
    from ..cli import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise UserFacingError(f"the demo's {argv[0]} step failed (exit code {code}); see the messages above")


def _check_or_fetch_models(args) -> None:
    missing = missing_files(args)
    if missing and args.download:
        run_step(["download", SELECTION, "--models-dir", args.models_dir] + (["--quiet"] if args.no_progress else []))
        missing = missing_files(args)
    if not missing:
        return
    from ..models.model_files.model_registry import human_size

    total = sum(m.expected_bytes() or 0 for m in missing)
    print(f"missing in {args.models_dir}:", file=sys.stderr)
    for m in missing:
        print(f"  {m.folder}/{m.filename}  ({m.title}, {m.display_size()})", file=sys.stderr)
    raise InputError(
        f"{len(missing)} model file(s) missing (about {human_size(total)}). Fetch them with: "
        f"python -m salient_background demo --download --models-dir {shlex.quote(args.models_dir)} "
        f"(or: {download_command(args.models_dir)})"
    )


def run(args: argparse.Namespace) -> int:
    from ..models.generation.pipeline import validate_si2_path

    if not os.path.isfile(args.photo):
        raise InputError(f"no such photo: {args.photo!r}")
    if os.path.isfile(args.output_dir):
        raise InputError(f"the demo output folder {args.output_dir!r} is a file, not a folder: choose another path")
    _check_or_fetch_models(args)
    out = ensure_output_dir(args.output_dir, "demo output folder")
    models = {k: getattr(args, k) or v for k, v in default_model_paths(args.models_dir).items()}
    validate_si2_path(models["si2"])
    device = ["--device", args.device] if args.device else []
    quiet = ["--no-progress"] if args.no_progress else []
    stem = os.path.splitext(os.path.basename(args.photo))[0]
    mask_dir, gen_dir, eval_dir = (os.path.join(out, name) for name in ("mask", "generate", "evaluate"))

    print(f"1/3 mask: the salient object of {args.photo}")
    run_step(["mask", args.photo, "--checkpoint", models["salient_checkpoint"], "--mode", args.salient_mode,
              "--output-dir", mask_dir, "--precision", args.precision] + device)
    print("2/3 generate: a new background (SD2 inpainting + the salient ControlNet)")
    run_step(["generate", args.photo, "--masks", mask_dir, "--prompt", args.prompt, "--si2", models["si2"],
              "--controlnet", models["controlnet"], "--steps", str(args.steps), "--seed", str(args.seed),
              "--size", str(args.size), "--output-dir", gen_dir, "--precision", args.precision] + device + quiet)
    print("3/3 evaluate: how much the object expanded (SAM)")
    run_step(["evaluate", "--manifest", os.path.join(gen_dir, "manifest.csv"), "--sam", models["sam"],
              "--output", eval_dir] + device + quiet)
    print(f"done: the new picture is {os.path.join(gen_dir, 'generated', f'{stem}_s{args.seed}.png')}, its mask "
          f"{os.path.join(mask_dir, stem + '_mask.png')}, the expansion score {os.path.join(eval_dir, 'expansion.csv')}")
    return 0
