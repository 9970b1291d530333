"""Training checkpoints on disk: save, list, find the one to resume from, load it; and the EMA of the weights.

A checkpoint is the folder ``<output_dir>/checkpoints/checkpoint-<step>``: accelerate's state (model, optimizer, lr
scheduler, RNG of every process), the ControlNet config, the EMA weights when EMA is on, and ``train_state.json``
(step, world size, batch), written last so that its presence marks the checkpoint complete. The folder is exportable
as it is (``training export``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Optional

import torch

from ..models.errors import InputError
from .config import TrainConfig

log = logging.getLogger("salient_background")

CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_STATE = "train_state.json"
EMA_FILE = "ema_controlnet.safetensors"
CONTROLNET_CONFIG = "controlnet_config.json"
RUN_CONFIG = "train_config.json"


class EMA:
    """Exponential moving average of the trainable ControlNet weights (fp32, kept on the training device)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up as diffusers' EMAModel
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.is_floating_point():
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.shadow.items()}, path,
                  metadata={"updates": str(self.updates), "decay": str(self.decay)})

    def load(self, path: str) -> None:
        from safetensors import safe_open

        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {}
            for k in self.shadow:
                self.shadow[k].copy_(fh.get_tensor(k))
        self.updates = int(meta.get("updates", 0))


def list_checkpoints(output_dir: str) -> list[str]:
    """The complete checkpoints of a run, oldest first."""
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
            if os.path.isfile(os.path.join(folder, name, TRAIN_STATE)):  # complete checkpoints only
                found.append(os.path.join(folder, name))
    return sorted(found, key=lambda p: int(os.path.basename(p)[len(CHECKPOINT_PREFIX):]))


def resolve_resume(config: TrainConfig) -> Optional[str]:
    """The checkpoint folder ``resume_from`` names ("latest" or a folder), or None to start from scratch."""
    if not config.resume_from:
        return None
    if config.resume_from == "latest":
        found = list_checkpoints(config.output_dir)
        if not found:
            log.info("no checkpoint in %s/checkpoints: starting from scratch", config.output_dir)
            return None
        return found[-1]
    path = config.resume_from
    if not os.path.isfile(os.path.join(path, TRAIN_STATE)):
        raise InputError(f"{path!r} is not a complete training checkpoint (no {TRAIN_STATE}); pass 'latest' or a "
                         f"{config.output_dir}/checkpoints/{CHECKPOINT_PREFIX}<step> folder")
    return path


def load_checkpoint(accelerator, folder: str, config: TrainConfig, ema: Optional[EMA]) -> int:
    """Restore the state saved in ``folder`` (model, optimizer, scheduler, RNG, EMA); returns its step."""
    accelerator.load_state(folder)
    with open(os.path.join(folder, TRAIN_STATE)) as fh:
        state = json.load(fh)
    world = accelerator.num_processes
    if state.get("world_size", world) * state.get("batch_size", config.batch_size) != config.batch_size * world:
        log.warning("resuming with a different global batch than the checkpoint's: the data order changes")
    if ema is not None and os.path.isfile(os.path.join(folder, EMA_FILE)):
        ema.load(os.path.join(folder, EMA_FILE))
    accelerator.print(f"resumed from {folder} at step {int(state['global_step'])}")
    return int(state["global_step"])


def save_checkpoint(accelerator, config: TrainConfig, raw_controlnet, ema, step: int, world: int) -> str:
    """Write ``checkpoint-<step>`` (every process takes part) and drop the oldest beyond the total limit."""
    folder = os.path.join(config.output_dir, "checkpoints", f"{CHECKPOINT_PREFIX}{step}")
    accelerator.save_state(folder)  # every process (RNG states per rank); model/optimizer written by the main one
    if accelerator.is_main_process:
        with open(os.path.join(folder, CONTROLNET_CONFIG), "w") as fh:
            json.dump(dict(raw_controlnet.config), fh, indent=2, default=list)
        if ema is not None:
            ema.save(os.path.join(folder, EMA_FILE))
        with open(os.path.join(folder, TRAIN_STATE), "w") as fh:  # written last: marks the checkpoint complete
            json.dump({"global_step": step, "world_size": world, "batch_size": config.batch_size,
                       "gradient_accumulation_steps": config.gradient_accumulation_steps, "seed": config.seed,
                       "ema": ema is not None}, fh, indent=2)
        found = list_checkpoints(config.output_dir)
        if config.checkpoints_total_limit and len(found) > config.checkpoints_total_limit:
            for old in found[: len(found) - config.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder
