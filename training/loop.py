"""The training run: set up the models, optimiser and data, then step, checkpoint, validate and export.

Only the ControlNet trains. It is created from the base's inpainting UNet (``ControlNetModel.from_unet``: 9 input
channels, 3-channel hint, zero-initialised output convs) or fine-tuned from a checkpoint in any form the loader node
reads (:mod:`training.base_models`). UNet, VAE and text encoder(s) are frozen in the mixed-precision dtype (SDXL's
VAE in fp32 under fp16). The objective is in :mod:`training.loss`.

Exactness: every random draw comes from :mod:`training.data` as a function of (seed, sample), so an interrupted and
resumed run is bitwise identical to an uninterrupted one on CPU in fp32, and N processes with batch b compute what
one process with batch N*b computes.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..models.errors import InputError
from ..models.bases import DEFAULT_BASE, get_base
from . import data as tdata
from .base_models import (load_base_components, make_controlnet, precheck_new_controlnet, resolve_base,
                          scheduler_config, vae_dtype_for)
from .caches import TextEmbeddingCache, as_list, build_latent_cache
from .checkpoints import EMA, RUN_CONFIG, load_checkpoint, resolve_resume, save_checkpoint
from .config import TrainConfig, run_metadata
from .dataset_check import training_rows
from .loss import training_loss
from .low_memory import TwoPassClippedStep, limit_heap_fragmentation
from .validation import Validator
from .validation_metrics import split_holdout

log = logging.getLogger("salient_background")


@dataclass
class TrainResult:
    global_step: int
    losses: list  # (step, loss averaged over processes) per optimizer step of this session
    output_dir: str
    export_dir: Optional[str]
    seconds_per_step: list
    controlnet: object = None  # the trained ControlNet (unwrapped, raw weights)
    ema: object = None


# ---------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------
def make_optimizer(params, config: TrainConfig):
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except Exception as exc:  # not installed, or no usable backend on this device
            log.warning("8-bit Adam unavailable (%s: %s); using torch AdamW", type(exc).__name__, exc)
    # foreach=False: no full-size temporary copies of the parameters during the step (lower peak memory)
    return torch.optim.AdamW(params, foreach=False, **kwargs)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401

        return True
    except ImportError:
        try:
            import tensorboardX  # noqa: F401

            return True
        except ImportError:
            return False


def load_models(config: TrainConfig):
    """(vae, text_encoder, tokenizer, unet, noise_scheduler, scheduler_config, controlnet), all on the CPU in fp32.
    With SDXL, ``text_encoder`` and ``tokenizer`` are lists of its two. The base is checked (and the new ControlNet's
    config too) before any weight is read."""
    from diffusers import DDPMScheduler

    base = resolve_base(config)
    precheck_new_controlnet(config)
    parts = load_base_components(base, config)
    sched_cfg = scheduler_config(config)
    noise_scheduler = DDPMScheduler.from_config(sched_cfg)
    controlnet = make_controlnet(config, base, parts.unet)
    return parts.vae, parts.text_encoder, parts.tokenizer, parts.unet, noise_scheduler, sched_cfg, controlnet


def _make_accelerator(config: TrainConfig, report_to: str):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    # several processes without GPUs (torchrun / accelerate launch on CPU): accelerate's MULTI_CPU mode (gloo)
    cpu = config.cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=os.path.join(config.output_dir, "logs")),
    )


def _check_memory_switches(config: TrainConfig, accelerator) -> None:
    """Refuse --optimizer-in-backward where it cannot be exact; set up --compact-heap."""
    if config.optimizer_in_backward:
        problem = ("several processes" if accelerator.num_processes > 1 else
                   "gradient accumulation" if config.gradient_accumulation_steps > 1 else
                   "fp16 loss scaling" if accelerator.mixed_precision == "fp16" else None)
        if problem:
            raise InputError(f"--optimizer-in-backward cannot be combined with {problem}: it needs every gradient "
                             "to be used the moment it is computed. Train without --optimizer-in-backward (use "
                             "--gradient-checkpointing to save memory), or with bf16 instead of fp16")
    if config.compact_heap and not limit_heap_fragmentation():
        log.warning("--compact-heap needs glibc (Linux); the allocator is left as it is")
    elif config.compact_heap and "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        log.info("--compact-heap: start the trainer with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment for "
                 "4x fewer page faults (measured: -17 % time per step at full size on the CPU)")


@dataclass
class _Models:
    vae: Any
    text_encoder: Any  # None once the caption cache replaced it and nothing else needs it
    tokenizer: Any
    unet: Any
    noise_scheduler: Any
    sched_cfg: dict
    controlnet: Any
    text_for_loss: Any  # the text encoder(s) or the TextEmbeddingCache standing in for them
    vae_dtype: torch.dtype = torch.float32


def _frozen_models(config: TrainConfig, rows, device, weight_dtype) -> _Models:
    """Load the models, freeze all but the ControlNet, and drop what this run will not use."""
    vae, text_encoder, tokenizer, unet, noise_scheduler, sched_cfg, controlnet = load_models(config)
    vae_dtype = vae_dtype_for(get_base(config.base), config, weight_dtype)
    for m, dtype in ((vae, vae_dtype), *((e, weight_dtype) for e in as_list(text_encoder)), (unet, weight_dtype)):
        m.requires_grad_(False)
        m.eval()
        m.to(device, dtype=dtype)
    text_for_loss = text_encoder
    captions = [c for r in rows for c in r.get("captions", []) if c]
    if config.text_embedding_cache and TextEmbeddingCache.worthwhile(text_encoder, captions, weight_dtype):
        text_for_loss = TextEmbeddingCache(text_encoder, tokenizer, captions, device, weight_dtype)
        if config.validation_steps <= 0:  # validation needs the text encoder; training then does not
            text_encoder = None
    elif config.text_embedding_cache:
        log.info("%d distinct captions: their embeddings would outweigh the text encoder, so it encodes per step",
                 len(set(captions)))
    if config.validation_steps <= 0:
        vae.decoder = None  # only validation decodes (~190 MiB in fp32)
    gc.collect()
    controlnet.train()
    if config.gradient_checkpointing in ("controlnet", "all"):
        controlnet.enable_gradient_checkpointing()
    if config.gradient_checkpointing == "all":
        unet.enable_gradient_checkpointing()
    return _Models(vae, text_encoder, tokenizer, unet, noise_scheduler, sched_cfg, controlnet, text_for_loss, vae_dtype)


def _max_steps(config: TrainConfig, num_rows: int, world: int) -> int:
    if config.max_train_steps is None and config.num_train_epochs is None:
        raise InputError("say how long to train: --max-train-steps or --num-train-epochs")
    if config.max_train_steps is not None:
        return config.max_train_steps
    steps_per_epoch = num_rows // (config.batch_size * world) // config.gradient_accumulation_steps
    return max(1, int(math.floor(config.num_train_epochs * max(1, steps_per_epoch))))


def _optimisation(config: TrainConfig, accelerator, controlnet, max_steps: int):
    """(prepared controlnet, optimizer, lr scheduler, learning rate)."""
    from diffusers.optimization import get_scheduler

    world = accelerator.num_processes
    lr = config.learning_rate
    if config.scale_lr:
        lr = lr * config.batch_size * config.gradient_accumulation_steps * world
    optimizer = make_optimizer(controlnet.parameters(), dataclasses.replace(config, learning_rate=lr))
    # accelerate steps a prepared scheduler once per process: count warm-up and length in those steps
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * world,
                                 num_training_steps=max_steps * world)
    controlnet, optimizer, lr_scheduler = accelerator.prepare(controlnet, optimizer, lr_scheduler)
    return controlnet, optimizer, lr_scheduler, lr


def _sample_config(config: TrainConfig, models: _Models) -> tdata.SampleConfig:
    vae = models.vae
    return tdata.SampleConfig(
        resolution=config.resolution, resize_to=config.resize_to, empty_caption_prob=config.empty_caption_prob,
        mask_aug_prob=config.mask_aug_prob, mask_aug_max_blur=config.mask_aug_max_blur,
        mask_aug_max_pixels=config.mask_aug_max_pixels, seed=config.seed,
        latent_channels=vae.config.latent_channels, vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        num_train_timesteps=models.noise_scheduler.config.num_train_timesteps,
        latent_cache_crops=config.latent_cache_crops,
        time_ids=get_base(config.base).added_conditioning == "text_time",
    )


def _data(config: TrainConfig, rows, models: _Models, accelerator, weight_dtype, start_step: int, stop_step: int):
    """(sample config, data loader of this process from ``start_step`` to ``stop_step``); builds the latent cache."""
    sample_cfg = _sample_config(config, models)
    dataset = tdata.SalientTrainingDataset(rows, sample_cfg, models.tokenizer)
    if config.latent_cache:
        if config.mask_aug_prob > 0:
            raise InputError("--latent-cache cannot be combined with --mask-aug-prob (the augmentation changes the "
                             "masked photo the cache holds)")
        sample_cfg.latent_cache_dir = build_latent_cache(config, dataset, models.vae, accelerator, models.vae_dtype)
        if config.validation_steps <= 0:
            models.vae.encoder = None  # nothing encodes any more
            gc.collect()
    accum = config.gradient_accumulation_steps
    sampler = tdata.ShardedBatchSampler(len(rows), config.batch_size, world_size=accelerator.num_processes,
                                        rank=accelerator.process_index, seed=config.seed,
                                        start_micro_step=start_step * accum, max_micro_steps=stop_step * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=tdata.collate,
                                         num_workers=config.num_workers, persistent_workers=False)
    return sample_cfg, loader


# ---------------------------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Session:
    """Everything the step loop reads and updates."""

    config: TrainConfig
    accelerator: Any
    models: _Models
    controlnet: Any  # as accelerate prepared it (maybe wrapped)
    raw_controlnet: Any
    optimizer: Any
    lr_scheduler: Any
    ema: Optional[EMA]
    weight_dtype: torch.dtype
    report_to: str
    max_steps: int
    stop_step: int
    global_step: int
    validator: Optional[Validator] = None
    in_backward: Optional[TwoPassClippedStep] = None
    losses: list = field(default_factory=list)
    times: list = field(default_factory=list)


def _micro_step(s: _Session, batch: dict) -> torch.Tensor:
    """Forward, backward and (when accumulation completes) the optimizer step of one micro-batch; returns the loss."""
    m, config = s.models, s.config
    with s.accelerator.accumulate(s.controlnet):
        loss = training_loss(batch, controlnet=s.controlnet, unet=m.unet, vae=m.vae, text_encoder=m.text_for_loss,
                             noise_scheduler=m.noise_scheduler, weight_dtype=s.weight_dtype,
                             device=s.accelerator.device, return_residuals=s.in_backward is not None,
                             vae_dtype=m.vae_dtype)
        if s.in_backward is not None:
            loss, residuals = loss
            # the UNet's backward once, down to the residuals; the ControlNet's inside the optimizer step
            s.in_backward.step(residuals, torch.autograd.grad(loss, residuals))
            del residuals
        else:
            s.accelerator.backward(loss)
            if s.accelerator.sync_gradients and config.max_grad_norm > 0:
                s.accelerator.clip_grad_norm_(s.controlnet.parameters(), config.max_grad_norm)
            s.optimizer.step()
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
    return loss


def _after_optimizer_step(s: _Session, step_loss: float, seconds: float) -> None:
    """Logging, periodic checkpoint and validation once ``global_step`` advanced."""
    config, accelerator, step = s.config, s.accelerator, s.global_step
    s.times.append(seconds)
    s.losses.append((step, step_loss))
    lr = s.lr_scheduler.get_last_lr()[0]
    if accelerator.is_main_process and (step % max(1, config.log_every) == 0 or step == s.stop_step):
        log.info("step %d/%d loss %.5f lr %.3g (%.2f s/step)", step, s.max_steps, step_loss, lr, seconds)
    if s.report_to != "none":
        accelerator.log({"loss": step_loss, "lr": lr}, step=step)
    if config.checkpointing_steps > 0 and step % config.checkpointing_steps == 0:
        save_checkpoint(accelerator, config, s.raw_controlnet, s.ema, step, accelerator.num_processes)
    if s.validator is not None and step % config.validation_steps == 0 and accelerator.is_main_process:
        m = s.models
        s.validator.run(accelerator, s.raw_controlnet, s.ema, m.vae, m.text_encoder, m.tokenizer, m.unet, step,
                        s.weight_dtype)


def _run_steps(s: _Session, loader) -> None:
    """The loop over this session's micro-batches."""
    config, accelerator, device = s.config, s.accelerator, s.accelerator.device
    rank = accelerator.process_index
    running, micro = 0.0, 0
    record = open(os.path.join(config.output_dir, f"samples-rank{rank}.jsonl"), "a") if config.record_samples else None
    try:
        t0 = time.perf_counter()
        for batch in loader:
            loss = _micro_step(s, batch)
            running += float(loss.detach())
            micro += 1
            if record is not None:
                record.write(json.dumps({"step": s.global_step + 1, "index": batch["index"],
                                         "position": batch["position"], "rank": rank,
                                         "loss": float(loss.detach())}) + "\n")
            if not accelerator.sync_gradients:
                continue
            s.global_step += 1
            step_loss = accelerator.reduce(torch.tensor(running / micro, device=device), reduction="mean").item()
            running, micro = 0.0, 0
            if s.ema is not None:
                s.ema.update(s.raw_controlnet)
            _after_optimizer_step(s, step_loss, time.perf_counter() - t0)
            t0 = time.perf_counter()
    finally:
        if record is not None:
            record.close()


def _finish(s: _Session, num_rows: int) -> Optional[str]:
    """Checkpoint where the session ended and, when the run is complete, export the ControlNet; its folder or None."""
    config, accelerator, step = s.config, s.accelerator, s.global_step
    unsaved = config.checkpointing_steps <= 0 or step % config.checkpointing_steps
    export_dir = None
    if step >= s.max_steps:
        if unsaved:
            save_checkpoint(accelerator, config, s.raw_controlnet, s.ema, step, accelerator.num_processes)
        # gathered from every process under DeepSpeed ZeRO-3 / FSDP (all processes take part)
        weights = s.ema.shadow if s.ema is not None else accelerator.get_state_dict(s.controlnet)
        if accelerator.is_main_process:
            from .export import export_controlnet

            export_dir = os.path.join(config.output_dir, "controlnet")
            export_controlnet(s.raw_controlnet, export_dir, fp16=config.export_fp16, state_dict=weights,
                              metadata=run_metadata(config, step, num_rows, s.ema is not None), base=config.base)
    elif config.stop_after_steps is not None and unsaved:
        save_checkpoint(accelerator, config, s.raw_controlnet, s.ema, step, accelerator.num_processes)
    accelerator.wait_for_everyone()
    return export_dir


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def _start_session(config: TrainConfig, accelerator, rows, report_to: str) -> _Session:
    """Models, optimisation and the resumed state: everything but the data."""
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    models = _frozen_models(config, rows, accelerator.device, weight_dtype)
    max_steps = _max_steps(config, len(rows), accelerator.num_processes)
    controlnet, optimizer, lr_scheduler, lr = _optimisation(config, accelerator, models.controlnet, max_steps)
    raw_controlnet = accelerator.unwrap_model(controlnet)
    ema = EMA(raw_controlnet, config.ema_decay) if config.ema_decay > 0 else None
    resume = resolve_resume(config)
    global_step = load_checkpoint(accelerator, resume, config, ema) if resume else 0
    stop_step = max_steps if config.stop_after_steps is None else min(max_steps, global_step + config.stop_after_steps)
    if accelerator.is_main_process:
        with open(os.path.join(config.output_dir, RUN_CONFIG), "w") as fh:
            json.dump(config.to_json(), fh, indent=2)
        if report_to != "none":
            accelerator.init_trackers("salient_controlnet", config={k: str(v) for k, v in config.to_json().items()})
        log.info("training: %d rows, %d process(es) x batch %d x accumulation %d, steps %d -> %d of %d, lr %g",
                 len(rows), accelerator.num_processes, config.batch_size, config.gradient_accumulation_steps,
                 global_step, stop_step, max_steps, lr)
    return _Session(config, accelerator, models, controlnet, raw_controlnet, optimizer, lr_scheduler, ema,
                    weight_dtype, report_to, max_steps, stop_step, global_step)


def _config_for_base(config: TrainConfig) -> TrainConfig:
    """The config with its base read from the model folder (an error when ``--base`` says otherwise, or when the
    run being resumed was made for another base) and the base's defaults filled in."""
    base = resolve_base(config)
    run_file = os.path.join(config.output_dir, RUN_CONFIG)
    if config.resume_from and os.path.isfile(run_file):
        with open(run_file) as fh:
            earlier = json.load(fh).get("base") or DEFAULT_BASE
        if earlier != base.name:
            raise InputError(f"{config.output_dir!r} holds a run for {earlier}, but the base model is {base.name}: "
                             "resume with the same base model, or train into a new --output-dir")
    return config.for_base(base)


def train(config: TrainConfig, *, accelerator=None) -> TrainResult:
    """Run (or resume) training. Returns the losses of this session; writes checkpoints, validation images and, when
    ``max_train_steps`` is reached, the exported ControlNet in ``<output_dir>/controlnet``."""
    config = _config_for_base(config)
    os.makedirs(config.output_dir, exist_ok=True)
    report_to = config.report_to
    if report_to == "auto":
        report_to = "tensorboard" if tensorboard_available() else "none"
    if accelerator is None:
        accelerator = _make_accelerator(config, report_to)
    _check_memory_switches(config, accelerator)
    rows = training_rows(config, resuming=resolve_resume(config) is not None, world_size=accelerator.num_processes,
                         is_main=accelerator.is_main_process)
    rows, held_out = split_holdout(config, rows)  # --validation-metrics: rows measured, never trained on
    s = _start_session(config, accelerator, rows, report_to)
    sample_cfg, loader = _data(config, rows, s.models, accelerator, s.weight_dtype, s.global_step, s.stop_step)
    if config.validation_steps > 0:
        s.validator = Validator(config, rows, sample_cfg, s.models.sched_cfg, held_out, accelerator.device)
    if config.optimizer_in_backward:
        s.in_backward = TwoPassClippedStep(s.raw_controlnet.parameters(),
                                           getattr(s.optimizer, "optimizer", s.optimizer), config.max_grad_norm)
    try:
        _run_steps(s, loader)
    finally:
        if s.in_backward is not None:
            s.in_backward.remove()  # the returned ControlNet carries no hooks of ours
    accelerator.wait_for_everyone()
    export_dir = _finish(s, len(rows))
    if report_to != "none":
        accelerator.end_training()
    return TrainResult(s.global_step, s.losses, config.output_dir, export_dir, s.times, s.raw_controlnet, s.ema)
