"""``generate``'s checks before any model loads: options, the paths named on the command line, and the plan of the
models (:func:`models.generation.model_plan.plan_models`: the base decided once, its config folder, the ControlNet
and whether it fits), all without reading weights."""
from __future__ import annotations

import os

from ..models.errors import InputError
from .common import check_run_options
from .generate_gate import check_gate_options


def validate_options(args):
    """Check the options and paths; return the run's :class:`ModelPlan` (and set ``args.size`` to the base's native
    canvas when it was not given)."""
    from ..models.generation.pipeline import SCHEDULERS

    check_run_options(args)
    if args.size is not None and (args.size <= 0 or args.size % 8):
        raise InputError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1 or args.num_images < 1 or args.batch_size < 1:
        raise InputError("--steps, --num-images and --batch-size must be at least 1")
    check_gate_options(args)  # with the gate, --keep jobs per photo and prompt
    if args.scheduler.lower() not in SCHEDULERS:
        raise InputError(f"unknown --scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not (args.pipeline or args.base_model):
        raise InputError("give the models: --pipeline DIR (photo-background-generation layout), or --base-model PATH "
                         "with --controlnet PATH")
    if args.pipeline and args.base_model:
        raise InputError("give either --pipeline or --base-model (--si2), not both")
    if args.base_model and not args.controlnet and args.controlnet_scale != 0:
        raise InputError("--base-model needs --controlnet PATH (or --controlnet-scale 0 for the inpainting baseline)")
    if args.salient_checkpoint and args.masks:
        raise InputError("give one mask source: --salient-checkpoint or --masks")
    _validate_paths(args)
    return _plan(args)


def _validate_paths(args) -> None:
    """Every file and folder named on the command line exists (what the loaders open, checked up front)."""
    named = [("--pipeline", args.pipeline), ("--base-model/--si2", args.base_model),
             ("--salient-checkpoint", args.salient_checkpoint), ("--masks", args.masks)]
    if args.controlnet_scale != 0:
        named.append(("--controlnet", args.controlnet))
    for option, path in named:
        if path and not os.path.exists(path):
            raise InputError(f"{option} {path!r} does not exist")
    if args.masks and not os.path.isdir(args.masks):
        raise InputError(f"--masks {args.masks!r} is not a folder")
    if args.salient_checkpoint and not os.path.isfile(args.salient_checkpoint):
        raise InputError(f"--salient-checkpoint {args.salient_checkpoint!r} is not a file")


def _plan(args):
    """The models of this run, planned once: the layout of the model path, its base (the canvas defaults to the
    base's native size), and a ControlNet of another base refused now (one error naming both bases)."""
    from ..models.generation.model_plan import plan_models

    if args.pipeline and args.controlnet_scale != 0 and not args.controlnet:
        if not os.path.isdir(os.path.join(args.pipeline, "controlnet")):
            raise InputError(f"--pipeline {args.pipeline!r} has no 'controlnet/' folder: give --controlnet PATH, or "
                             "--controlnet-scale 0 for the inpainting baseline")
    plan = plan_models(args.pipeline, base_model_path=args.base_model, controlnet_path=args.controlnet,
                       use_controlnet=args.controlnet_scale != 0)
    if args.size is None:
        args.size = plan.base.resolution
    return plan
