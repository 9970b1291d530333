"""``python -m salient_background demo``: the main job on the example photo shipped in the repository, in one command.

Runs ``mask`` -> ``generate`` -> ``evaluate`` on ``workflows/inputs/example_product.png`` with the models in
``--models-dir`` (default ``outputs/models``, laid out as ComfyUI's models folder), writing into ``--output-dir``
(default ``outputs/demo``): ``mask/`` (the object mask and cut-out), ``generate/`` (framed input, mask, the new
picture in ``generated/`` and ``manifest.csv``) and ``evaluate/`` (``expansion.csv``, ``summary.json``).

SD2 inpainting is read from the single file ComfyUI uses (``checkpoints/512-inpainting-ema.safetensors`` or
``.ckpt``, plus its small config folder) or from the diffusers folder ``diffusers/stable-diffusion-2-inpainting``;
the ControlNet from ``controlnet/photo-background-generation`` (``.safetensors`` or ``.bin`` weights) or the authors'
``controlnet/controlnet_inpainting_salient_aware.pth`` -- what the loaders accept. Files kept elsewhere are given with
--si2/--base-model, --controlnet, --salient-checkpoint and --sam. Missing models are fetched only with
``--download``; without it the command lists what is missing, the options that point at files you already have,
and the command that fetches the rest. A --models-dir you name must exist (a misspelt path is refused) unless
--create-models-dir. Each step is the command of the same name, run with the arguments its own parser reads.
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
DEFAULT_MODELS_DIR = os.path.join("outputs", "models")
# the authors' release of the ControlNet (the loader reads it; not a registry row), looked for in controlnet/
RELEASED_CONTROLNET = "controlnet_inpainting_salient_aware.pth"
# each model the demo uses: the option that points at a file the user has elsewhere, and what that option takes
OPTIONS = {
    "si2": ("--si2 PATH (or --base-model)", "SD2 inpainting: 512-inpainting-ema.safetensors or .ckpt (its config "
            "folder beside it or in <models>/diffusers/stable-diffusion-2-inpainting), or a diffusers folder"),
    "controlnet": ("--controlnet PATH", "the salient ControlNet: a diffusers folder (.safetensors or .bin weights), "
                   f"one weights file, or the authors' {RELEASED_CONTROLNET}"),
    "salient_checkpoint": ("--salient-checkpoint PATH", "InSPyReNet ckpt_base.pth"),
    "sam": ("--sam PATH", "a SAM checkpoint (sam_vit_b_01ec64.pth)"),
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job in one command: mask -> generate -> evaluate on the shipped example photo",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models-dir", default=None,
                        help="models folder in ComfyUI's layout (default outputs/models; ComfyUI/models works too); "
                             "a folder you name must exist unless --create-models-dir")
    parser.add_argument("--create-models-dir", action="store_true",
                        help="create --models-dir if it does not exist (the default outputs/models always may be)")
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
    override = parser.add_argument_group("model files you already have (instead of the files in --models-dir)")
    override.add_argument("--si2", "--base-model", dest="si2", metavar="PATH",
                          help="SD2 inpainting: single file (.safetensors/.ckpt) or diffusers folder")
    override.add_argument("--controlnet", metavar="PATH",
                          help="salient ControlNet: folder (.safetensors or .bin weights), weights file or the "
                               "released .pth")
    override.add_argument("--salient-checkpoint", metavar="PATH", help="InSPyReNet checkpoint")
    override.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="its mode (default base)")
    override.add_argument("--sam", metavar="PATH", help="SAM checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _registry_path(models_dir: str, entry) -> str:
    from ..models.model_files.model_registry import FOLDER_DEFAULT_SUBDIRS

    return os.path.join(models_dir, FOLDER_DEFAULT_SUBDIRS[entry.folder], *entry.filename.split("/"))


def _absent(models_dir: str, entries) -> list:
    return [m for m in entries if not os.path.isfile(_registry_path(models_dir, m))]


def _has_weights(folder: str, subfolders) -> bool:
    """Each sub-folder holds a weights file (a folder from ``download sd2-configs`` has only the configs)."""
    from ..models.networks.checkpoint_io import WEIGHT_SUFFIXES

    return all(os.path.isdir(os.path.join(folder, sub))
               and any(f.lower().endswith(WEIGHT_SUFFIXES) for f in os.listdir(os.path.join(folder, sub)))
               for sub in subfolders)


def _find_si2(models_dir: str):
    """(path, missing rows): SD2 inpainting in the models folder as the model plan's own check accepts it -- the
    single file ComfyUI uses (with its configs where the loader looks) or the diffusers folder ``download generate``
    writes."""
    from ..models.errors import CheckpointError
    from ..models.generation.model_plan import SINGLE_FILE_SUFFIXES, config_dir_candidates, validate_base_model_path
    from ..models.model_files.model_registry import BY_KEY, select

    single = _registry_path(models_dir, BY_KEY["sd2_inpainting"])
    singles = [os.path.splitext(single)[0] + suffix for suffix in SINGLE_FILE_SUFFIXES]
    folder = config_dir_candidates(single)[-1]  # <models>/diffusers/stable-diffusion-2-inpainting
    for path in singles + ([folder] if _has_weights(folder, ("unet", "vae", "text_encoder")) else []):
        if os.path.exists(path):
            try:
                validate_base_model_path(path)
                return path, []
            except CheckpointError:
                continue  # e.g. a single file whose configs are not there yet: they are listed below
    have_single = any(os.path.isfile(p) for p in singles)
    return None, _absent(models_dir, ([] if have_single else [BY_KEY["sd2_inpainting"]]) + select(["sd2-configs"]))


def _find_controlnet(models_dir: str):
    """(path, missing rows): the ControlNet folder (any weights file the loader reads) or the authors' ``.pth``."""
    from ..models.errors import CheckpointError
    from ..models.model_files.model_registry import select
    from ..models.networks.controlnet_checkpoint import resolve_controlnet_path

    rows = select(["controlnet"])
    folder = os.path.dirname(_registry_path(models_dir, rows[0]))
    for path in (folder, os.path.join(os.path.dirname(folder), RELEASED_CONTROLNET)):
        if os.path.exists(path):
            try:
                resolve_controlnet_path(path)
                return path, []
            except CheckpointError:
                continue
    return None, _absent(models_dir, rows)


def _find_file(models_dir: str, key: str):
    from ..models.model_files.model_registry import BY_KEY

    path = _registry_path(models_dir, BY_KEY[key])
    return (path, []) if os.path.isfile(path) else (None, [BY_KEY[key]])


def find_models(models_dir: str) -> dict:
    """For each model of the demo: (path in ``models_dir`` or None, registry rows missing there)."""
    return {
        "si2": _find_si2(models_dir),
        "controlnet": _find_controlnet(models_dir),
        "salient_checkpoint": _find_file(models_dir, "inspyrenet_base"),
        "sam": _find_file(models_dir, "sam_vit_b"),
    }


def _creating(args) -> list[str]:
    """``--create-models-dir`` for a printed command when the folder is still to be made."""
    return [] if os.path.isdir(args.models_dir) else ["--create-models-dir"]


def download_command(args, missing=None) -> str:
    """The command that fetches what is missing: ``download demo`` when it is everything, the registry's names
    otherwise (``sd2-configs`` for the single file's config files)."""
    from ..models.model_files.model_registry import download_command as fetch_command, select

    missing = select([SELECTION]) if missing is None else missing
    names = []
    for selection in (SELECTION, "sd2-configs"):
        rows = select([selection])
        if all(m in missing for m in rows):
            names.append(selection)
            missing = [m for m in missing if m not in rows]
    command = fetch_command(missing) if missing else "python -m salient_background download"
    return " ".join([command, *names, "--models-dir", shlex.quote(args.models_dir)] + _creating(args))


def run_step(argv: list[str]) -> None:
    """Run another command exactly as ``python -m salient_background <argv>`` would (its own parser, its run)."""
    from ..cli import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise UserFacingError(f"the demo's {argv[0]} step failed (exit code {code}); see the messages above")


def _check_given_paths(args) -> None:
    """Files named on the command line exist and are of a form their loader reads (before a download)."""
    from ..models.generation.model_plan import validate_base_model_path
    from ..models.networks.controlnet_checkpoint import resolve_controlnet_path

    if args.si2:
        validate_base_model_path(args.si2)
    if args.controlnet:
        resolve_controlnet_path(args.controlnet)
    _check_files(args)


def _check_files(args) -> None:
    for option in ("salient_checkpoint", "sam"):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            raise InputError(f"--{option.replace('_', '-')} {path!r}: no such file")


def _report_missing(args, missing: dict) -> None:
    from ..models.model_files.model_registry import human_size

    rows = [m for entries in missing.values() for m in entries]
    total = sum(m.expected_bytes() or 0 for m in rows)
    print(f"missing in {args.models_dir}:", file=sys.stderr)
    for m in rows:
        print(f"  {m.folder}/{m.filename}  ({m.title}, {m.display_size()})", file=sys.stderr)
    print("Already have them elsewhere? Point at them instead of fetching:", file=sys.stderr)
    for option in missing:
        flag, takes = OPTIONS[option]
        print(f"  {flag:30} {takes}", file=sys.stderr)
    again = " ".join(["python -m salient_background demo --download --models-dir", shlex.quote(args.models_dir)]
                     + _creating(args))
    raise InputError(
        f"{len(rows)} model file(s) missing (about {human_size(total)}). Fetch them with: "
        f"{again} (or: {download_command(args, rows)})"
    )


def _missing(args, found: dict) -> dict[str, list]:
    """Registry rows not in ``--models-dir`` (and not replaced by an option), per option that could replace them."""
    return {option: rows for option, (path, rows) in found.items() if getattr(args, option) is None and rows}


def model_paths(args) -> dict[str, str]:
    """The file of each model: the option's, else the one in ``--models-dir`` (fetched first with ``--download``);
    an error listing what is missing, the options that point at files the user has, and the fetch command."""
    found = find_models(args.models_dir)
    missing = _missing(args, found)
    if missing and args.download:
        _check_given_paths(args)  # a wrong path is said before gigabytes are fetched
        keys = [m.key for rows in missing.values() for m in rows]
        run_step(["download", *keys, "--models-dir", args.models_dir, "--create-models-dir"]
                 + (["--quiet"] if args.no_progress else []))
        found = find_models(args.models_dir)
        missing = _missing(args, found)
    if missing:
        _report_missing(args, missing)
    return {option: getattr(args, option) or path for option, (path, _) in found.items()}


def run(args: argparse.Namespace) -> int:
    from ..models.generation.model_plan import plan_models
    from ..models.model_files.model_paths import check_models_dir

    if not os.path.isfile(args.photo):
        raise InputError(f"no such photo: {args.photo!r}")
    if os.path.isfile(args.output_dir):
        raise InputError(f"the demo output folder {args.output_dir!r} is a file, not a folder: choose another path")
    # the default folder is the demo's own and may be made; a folder the user typed must exist (a typo is refused)
    given = args.models_dir is not None
    args.models_dir = args.models_dir if given else DEFAULT_MODELS_DIR
    check_models_dir(args.models_dir, create=args.create_models_dir or not given)
    models = model_paths(args)
    # the base model, its configs and the ControlNet (form and base), checked once without reading weights
    plan = plan_models(base_model_path=models["si2"], controlnet_path=models["controlnet"])
    models.update(si2=plan.model_path, controlnet=plan.controlnet_path)
    _check_files(args)
    out = ensure_output_dir(args.output_dir, "demo output folder")
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
