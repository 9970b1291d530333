"""Export a trained ControlNet as the diffusers folder the loader node reads.

Output folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (fp32, or fp16 with ``fp16=True``) and
``salient_controlnet.json`` (base model, steps, data, recipe). This is the same form as the ``controlnet/`` folder of
``yahoo-inc/photo-background-generation``, plus the base the ControlNet is for (``salient_base`` in ``config.json``
and in the safetensors metadata). :func:`export_checkpoint` re-reads the result through
:func:`models.networks.controlnet_checkpoint.build_diffusers_controlnet` -- the loader node's code -- and checks its
config against what ComfyUI can build (:mod:`models.networks.comfy_constraints`, from the model families of
:data:`models.bases.COMFY_FAMILIES`) before returning, so a folder that would not load is never reported as exported.

Sources: a ``ControlNetModel`` in memory (the trainer's final export), or a trainer checkpoint folder
(``<output_dir>/checkpoints/checkpoint-<step>``: accelerate's ``model.safetensors`` + our ``controlnet_config.json``,
optionally the EMA weights).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Mapping, Optional

import torch

from ..models.errors import CheckpointError
from ..models.bases import BASE_RECORD, as_base, base_from_weights

log = logging.getLogger("salient_background")

METADATA_FILE = "salient_controlnet.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
FORMAT_NAME = "salient_background ControlNet export v1"


def export_controlnet(controlnet, folder: str, *, fp16: bool = False, state_dict: Optional[Mapping] = None,
                      metadata: Optional[dict] = None, base=None) -> str:
    """Write ``controlnet`` (or ``state_dict`` with its config, e.g. EMA weights) as a diffusers folder + metadata,
    recording ``base`` (default: the one its weights show)."""
    os.makedirs(folder, exist_ok=True)
    state = state_dict if state_dict is not None else controlnet.state_dict()
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state.items()}
    config = {k: v for k, v in dict(controlnet.config).items()}
    _write_folder(folder, config, tensors, metadata or {}, fp16, _base_name(base, tensors))
    return folder


def _base_name(base, tensors: Mapping) -> str:
    return as_base(base).name if base else base_from_weights(tensors).name


def _write_folder(folder: str, config: dict, tensors: dict, metadata: dict, fp16: bool, base: str) -> None:
    from safetensors.torch import save_file

    config = dict(config)
    config[BASE_RECORD] = base
    config.setdefault("_class_name", "ControlNetModel")
    try:
        import diffusers

        config.setdefault("_diffusers_version", diffusers.__version__)
    except ImportError:  # pragma: no cover
        pass
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True, default=list)
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt", BASE_RECORD: base})
    meta = {"format": FORMAT_NAME, "base": base, "dtype": "fp16" if fp16 else "fp32",
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "parameters": int(sum(t.numel() for t in tensors.values())), **metadata}
    with open(os.path.join(folder, METADATA_FILE), "w") as fh:
        json.dump(meta, fh, indent=2, default=str)


def export_checkpoint(checkpoint: str, folder: str, *, fp16: bool = False, ema: bool = False,
                      cross_attention_dim: Optional[int] = None) -> str:
    """Export a trainer checkpoint folder (or a training output folder: its latest checkpoint), then verify it loads
    through the loader code and that ComfyUI can build it. ``ema``: export the EMA weights (the checkpoint must have
    them). The base recorded is the run's (``train_config.json``), else the one the weights show."""
    from safetensors.torch import load_file

    from ..models.networks.controlnet_checkpoint import build_diffusers_controlnet
    from .checkpoints import CONTROLNET_CONFIG, EMA_FILE, RUN_CONFIG, TRAIN_STATE, list_checkpoints

    checkpoint = os.fspath(checkpoint)
    if not os.path.isfile(os.path.join(checkpoint, TRAIN_STATE)):
        found = list_checkpoints(checkpoint)
        if not found:
            raise CheckpointError(
                f"{checkpoint!r} is neither a training checkpoint (no {TRAIN_STATE}) nor a training output folder with "
                "checkpoints/checkpoint-<step> in it"
            )
        checkpoint = found[-1]
    with open(os.path.join(checkpoint, CONTROLNET_CONFIG)) as fh:
        config = json.load(fh)
    with open(os.path.join(checkpoint, TRAIN_STATE)) as fh:
        state_info = json.load(fh)
    if ema:
        path = os.path.join(checkpoint, EMA_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(f"{checkpoint!r} has no EMA weights ({EMA_FILE}); train with --ema-decay or drop --ema")
    else:
        path = os.path.join(checkpoint, "model.safetensors")
        if not os.path.isfile(path):
            raise CheckpointError(f"{checkpoint!r} has no model.safetensors (accelerate's model weights)")
    state = load_file(path)
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    meta = {"checkpoint": os.path.abspath(checkpoint), "steps": state_info.get("global_step"),
            "weights": "EMA" if ema else "raw"}
    run_cfg = os.path.join(os.path.dirname(os.path.dirname(checkpoint)), RUN_CONFIG)
    run = {}
    if os.path.isfile(run_cfg):
        with open(run_cfg) as fh:
            run = json.load(fh)
        meta.update({"base_model": run.get("base_model"), "data": run.get("data"),
                     "recipe": {k: run.get(k) for k in ("resolution", "resize_to", "empty_caption_prob", "mask_aug_prob",
                                                        "batch_size", "learning_rate", "lr_scheduler", "mixed_precision",
                                                        "ema_decay", "seed")}})
    os.makedirs(folder, exist_ok=True)
    _write_folder(folder, config, tensors, meta, fp16, _base_name(run.get("base"), tensors))
    width = cross_attention_dim or config.get("cross_attention_dim")
    build_diffusers_controlnet(folder, cross_attention_dim=width)  # the loader node's code must read it
    verify_comfy_buildable(config, folder)
    return folder


def verify_comfy_buildable(config: Mapping, folder: str) -> None:
    """The export's ComfyUI check: a ControlNet of a model family ComfyUI knows must be one it can build as it is;
    one of no known family (a test or pruned model) cannot be used in ComfyUI at all, which is only logged."""
    from ..models.networks.comfy_constraints import comfy_buildable_problems, comfy_family

    problems = comfy_buildable_problems(config)
    if problems and comfy_family(config) is not None:
        raise CheckpointError(f"the ControlNet exported to {folder!r} loads with diffusers, but ComfyUI could not "
                              "build it: " + "; ".join(problems))
    if problems:
        log.warning("the ControlNet exported to %s is of no model family ComfyUI knows: %s", folder, "; ".join(problems))


# ---------------------------------------------------------------------------------------------- --select-best
DEFAULT_FID_MARGIN = 0.05


def select_best_checkpoint(output_dir: str, fid_margin: float = DEFAULT_FID_MARGIN) -> tuple[str, dict]:
    """The checkpoint of a training run with the lowest mean expansion on the held-out inputs among those whose FID
    stays within ``fid_margin`` (a fraction: 0.05 = 5 %) above the baseline's, from the ``--validation-metrics``
    records in ``validation/validation.jsonl`` (a step validated twice, e.g. after a resume, counts by its last
    record). Only validated steps whose checkpoint is still on disk compete. Returns (checkpoint folder, the choice
    with every candidate)."""
    from .checkpoints import CHECKPOINT_PREFIX, list_checkpoints

    if fid_margin < 0:
        raise CheckpointError(f"--fid-margin must be 0 or more, not {fid_margin}")
    records = _metric_records(output_dir)
    on_disk = {int(os.path.basename(p)[len(CHECKPOINT_PREFIX):]): p for p in list_checkpoints(output_dir)}
    candidates, baseline_fid = [], None
    for step in sorted(records):
        metrics = records[step]
        baseline_fid = (metrics.get("baseline") or {}).get("fid", baseline_fid)
        ours = metrics.get("controlnet") or {}
        if step in on_disk and ours.get("fid") is not None and ours.get("expansion_relative") is not None:
            candidates.append({"step": step, "fid": ours["fid"], "expansion_relative": ours["expansion_relative"],
                               "checkpoint": on_disk[step]})
    if baseline_fid is None or not candidates:
        raise CheckpointError(
            f"--select-best needs validation records with FID and expansion for checkpoints still on disk in "
            f"{output_dir!r}: train with --validation-metrics (FID model and --validation-sam present) and "
            "--checkpointing-steps a multiple of --validation-steps")
    limit = baseline_fid * (1.0 + fid_margin)
    eligible = [c for c in candidates if c["fid"] <= limit]
    if not eligible:
        raise CheckpointError(f"no checkpoint keeps FID within {100 * fid_margin:g} % of the baseline's "
                              f"{baseline_fid:.4g} (limit {limit:.4g}); the candidates' FIDs: "
                              + ", ".join(f"step {c['step']}: {c['fid']:.4g}" for c in candidates))
    best = min(eligible, key=lambda c: (c["expansion_relative"], c["step"]))
    return best["checkpoint"], {"chosen": best, "baseline_fid": baseline_fid, "fid_limit": limit,
                                "candidates": candidates}


def _metric_records(output_dir: str) -> dict:
    """{step: metrics} of ``validation/validation.jsonl``'s records that hold the table's summary."""
    path = os.path.join(output_dir, "validation", "validation.jsonl")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found: --select-best reads the validation records of a training output "
                              "folder (train with --validation-metrics)")
    records = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
                records[int(record["step"])] = record["metrics"]
    return records
