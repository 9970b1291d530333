"""The salient-aware ControlNet trainer (accelerate; single process, multi-GPU, multi-node, DeepSpeed/FSDP by config).

Only the ControlNet trains. It is created from the SD2-inpainting UNet (``ControlNetModel.from_unet``: 9 input
channels, 3-channel hint, zero-initialised output convs) or fine-tuned from a checkpoint in any form the loader node
reads. UNet, VAE and text encoder are frozen in the mixed-precision dtype. Per step (DESIGN §2): the photo and its
masked version are VAE-encoded **in one batched call** (the reference makes two calls), the mask is downsampled to the
latent grid, DDPM noise at uniform timesteps, and the ControlNet receives the same 9-channel tensor as the UNet;
the loss is the plain epsilon MSE over all latents.

Exactness: every random draw comes from :mod:`training.data` as a function of (seed, sample), so an interrupted and
resumed run is bitwise identical to an uninterrupted one on CPU in fp32, and N processes with batch b compute what
one process with batch N*b computes. Checkpoints (``checkpoints/checkpoint-<step>``) hold accelerate's state
(model, optimizer, lr scheduler, RNG) plus ``train_state.json`` (step and data position), the EMA weights and the
ControlNet config, and are exportable as they are.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..models.errors import InputError
from ..models.inpaint_inputs import latent_mask
from . import data as tdata
from .low_memory import TwoPassClippedStep, limit_heap_fragmentation

log = logging.getLogger("salient_background")

CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_STATE = "train_state.json"
EMA_FILE = "ema_controlnet.safetensors"
CONTROLNET_CONFIG = "controlnet_config.json"
RUN_CONFIG = "train_config.json"
PAPER_CONDITIONING_CHANNELS = (16, 32, 96, 256)
CHECKPOINTING_CHOICES = ("off", "controlnet", "all")


@dataclass
class TrainConfig:
    """Every trainer setting; the CLI maps one flag to each field (``--learning-rate`` -> ``learning_rate``)."""

    data: str = ""  # manifest (.jsonl/.csv) or the dataset folder holding one
    base_model: str = ""  # local SD2-inpainting diffusers folder (or the photo-background-generation folder)
    output_dir: str = "controlnet-training"
    controlnet: Optional[str] = None  # fine-tune from this checkpoint (any form the loader reads); None = from_unet
    conditioning_channels: tuple = PAPER_CONDITIONING_CHANNELS
    # data recipe
    resolution: int = 512
    resize_to: int = 768
    empty_caption_prob: float = 0.1
    mask_aug_prob: float = 0.0
    mask_aug_max_blur: float = 8.0
    mask_aug_max_pixels: int = 16
    num_workers: int = 0
    # optimisation
    batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-6
    scale_lr: bool = False  # multiply lr by batch * accumulation * processes
    lr_scheduler: str = "constant"  # constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    max_train_steps: Optional[int] = None
    num_train_epochs: Optional[float] = None
    mixed_precision: str = "no"  # no, fp16, bf16
    cpu: bool = False  # train on the CPU even when a GPU is there
    # recompute activations in the backward: "off", "controlnet" (most of the saving, its forward again) or "all"
    # (the UNet's decoder too); True means "all"
    gradient_checkpointing: str = "off"
    # step the optimizer inside the backward, freeing each gradient at once (exact; one more ControlNet backward)
    optimizer_in_backward: bool = False
    # give freed memory back to the system at once (glibc): ~1 GiB lower peak at full size, ~25 % more time per step
    compact_heap: bool = False
    # embed every distinct caption once, then free the text encoder (exact; used when the table is smaller than it)
    text_embedding_cache: bool = True
    latent_cache: bool = False  # VAE-encode K fixed crops per row once, then train without the VAE (time/memory)
    latent_cache_crops: int = 4
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.9999
    seed: int = 0
    # checkpoints, logging, validation
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = 3
    resume_from: Optional[str] = None  # "latest" or a checkpoint folder
    stop_after_steps: Optional[int] = None  # end this session early (the run stays resumable); for tests/time-boxing
    log_every: int = 10
    report_to: str = "auto"  # auto (TensorBoard when installed), tensorboard, none
    validation_steps: int = 0  # 0 = never
    validation_rows: int = 2  # take this many manifest rows (centre crop) as validation inputs
    validation_images: list = field(default_factory=list)
    validation_masks: list = field(default_factory=list)  # object masks (white = object) for validation_images
    validation_prompts: list = field(default_factory=list)
    validation_inference_steps: int = 20
    validation_guidance: float = 7.5
    validation_sam: Optional[str] = None  # SAM checkpoint: also report the object-expansion score
    export_fp16: bool = False  # the final export's weights dtype
    record_samples: bool = False  # write samples-rank<r>.jsonl: which rows/noise positions each process trained on

    def __post_init__(self):
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "all" if self.gradient_checkpointing else "off"
        if self.gradient_checkpointing not in CHECKPOINTING_CHOICES:
            raise InputError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}, "
                             f"not {self.gradient_checkpointing!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["conditioning_channels"] = list(self.conditioning_channels)
        return d


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------------------------------------------
class TextEmbeddingCache:
    """Text embeddings of every distinct caption of the dataset (and ""), computed once with the frozen text encoder,
    which can then leave memory. The encoder is frozen, so this changes nothing but time and memory; it suits datasets
    whose distinct captions fit in memory (77 x width floats each: ~315 kB at SD2's 1024 in fp32)."""

    def __init__(self, text_encoder, tokenizer, captions, device, dtype, batch_size: int = 32):
        texts = sorted(set(captions) | {""})
        self.index = {t: i for i, t in enumerate(texts)}
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids = tdata.tokenize(tokenizer, texts[start:start + batch_size]).to(device)
                attention_mask = None
                if getattr(text_encoder.config, "use_attention_mask", False):
                    attention_mask = (ids != text_encoder.config.pad_token_id).long()
                chunks.append(text_encoder(ids, attention_mask=attention_mask)[0].to(dtype))
        self.table = torch.cat(chunks)

    @staticmethod
    def table_bytes(text_encoder, captions, dtype) -> int:
        distinct = len(set(captions) | {""})
        return distinct * text_encoder.config.max_position_embeddings * text_encoder.config.hidden_size * \
            torch.finfo(dtype).bits // 8

    @staticmethod
    def worthwhile(text_encoder, captions, dtype) -> bool:
        """Whether the table is smaller than the encoder it replaces (~4000 distinct captions for SD2 in fp32)."""
        encoder_bytes = sum(p.numel() * p.element_size() for p in text_encoder.parameters())
        return TextEmbeddingCache.table_bytes(text_encoder, captions, dtype) <= encoder_bytes

    def lookup(self, captions) -> torch.Tensor:
        return self.table[torch.tensor([self.index[c] for c in captions], device=self.table.device)]


def load_models(config: TrainConfig):
    """(vae, text_encoder, tokenizer, unet, noise_scheduler, scheduler_config, controlnet), all on the CPU in fp32."""
    from diffusers import ControlNetModel, DDPMScheduler

    from ..models.pipeline import load_controlnet, load_si2_components

    if not config.base_model:
        raise InputError("no base model: pass --base-model, the local stable-diffusion-2-inpainting folder")
    vae, text_encoder, tokenizer, unet, _ = load_si2_components(config.base_model)
    with open(os.path.join(config.base_model, "scheduler", "scheduler_config.json")) as fh:
        sched_cfg = json.load(fh)
    noise_scheduler = DDPMScheduler.from_config(sched_cfg)
    if config.controlnet:
        controlnet = load_controlnet(config.controlnet, unet=unet)
    else:
        with torch.random.fork_rng(devices=[]):  # the new conditioning embedding's random init: a function of the seed
            torch.manual_seed(config.seed)
            controlnet = ControlNetModel.from_unet(
                unet, conditioning_channels=3, conditioning_embedding_out_channels=tuple(config.conditioning_channels)
            )
    return vae, text_encoder, tokenizer, unet, noise_scheduler, sched_cfg, controlnet


def scaling_factor(vae) -> float:
    return float(vae.config.scaling_factor)


def build_latent_cache(config: TrainConfig, dataset, vae, accelerator, weight_dtype) -> str:
    """VAE posteriors (mean, std) of the photo and of the masked photo for ``latent_cache_crops`` fixed crops of every
    row, one safetensors file per row under ``<output_dir>/latent_cache``. Built once (each process its share of the
    rows, resumable: existing files are kept), then training runs no VAE at all. The crops are a function of the seed;
    the random crop of each sample is drawn among them (so the crop augmentation has K positions per photo instead of
    all of them). Not combinable with the mask augmentation (it changes the masked photo)."""
    from safetensors.torch import save_file

    from ..models.inpaint_inputs import build_inpaint_inputs

    cfg = dataset.config
    folder = os.path.join(config.output_dir, "latent_cache")
    os.makedirs(folder, exist_ok=True)
    signature = {"resolution": cfg.resolution, "resize_to": cfg.resize_to, "crops": cfg.latent_cache_crops,
                 "seed": cfg.seed, "rows": len(dataset), "base_model": os.path.abspath(config.base_model),
                 "first_row": dataset.rows[0]["image"], "last_row": dataset.rows[-1]["image"]}
    sig_path = os.path.join(folder, "cache_config.json")
    if accelerator.is_main_process:
        if os.path.isfile(sig_path) and json.load(open(sig_path)) != signature:
            log.warning("the latent cache in %s was built for other settings or data: rebuilding it", folder)
            shutil.rmtree(folder)
            os.makedirs(folder)
        with open(sig_path, "w") as fh:
            json.dump(signature, fh, indent=2)
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    built = 0
    with torch.no_grad():
        for index in range(accelerator.process_index, len(dataset), accelerator.num_processes):
            path = tdata.cached_latents_path(folder, index)
            if os.path.isfile(path):
                continue
            out = {k: [] for k in tdata.LATENT_KEYS}
            for crop in range(cfg.latent_cache_crops):
                image, mask = dataset.load_crop(index, dataset.cache_crop_rng(index, crop))
                inputs = build_inpaint_inputs(image[None], mask[None], layout="BCHW")
                for prefix, pixels in (("latent", image[None] * 2.0 - 1.0), ("masked", inputs.masked_image)):
                    posterior = vae.encode(pixels.to(accelerator.device, weight_dtype)).latent_dist
                    out[f"{prefix}_mean"].append(posterior.mean[0].float().cpu())
                    out[f"{prefix}_std"].append(posterior.std[0].float().cpu())
            save_file({k: torch.stack(v).contiguous() for k, v in out.items()}, path + ".tmp")
            os.replace(path + ".tmp", path)
            built += 1
    accelerator.wait_for_everyone()
    if built:
        log.info("latent cache: %d rows x %d crops encoded in %.1f s (%s)", built, cfg.latent_cache_crops,
                 time.perf_counter() - start, folder)
    return folder


def training_loss(batch: dict, *, controlnet, unet, vae, text_encoder, noise_scheduler, weight_dtype, device,
                  return_residuals: bool = False):
    """The epsilon-MSE of one batch (the per-sample random draws come with the batch); with ``return_residuals``
    also the ControlNet's outputs (down residuals + mid), where the low-memory step cuts the backward in two."""
    with torch.no_grad():
        if "latent_mean" in batch:  # the latent cache: the VAE posteriors were computed once, before training
            moments = [batch[k].to(device, torch.float32) for k in tdata.LATENT_KEYS]
        else:
            moments = []
            for key in ("pixel_values", "masked_image"):
                posterior = vae.encode(batch[key].to(device, weight_dtype)).latent_dist
                moments += [posterior.mean, posterior.std]
        scale = scaling_factor(vae)
        latents = (moments[0] + moments[1] * batch["latent_eps"].to(device, moments[0].dtype)) * scale
        masked_latents = (moments[2] + moments[3] * batch["masked_latent_eps"].to(device, moments[2].dtype)) * scale
        latents, masked_latents = latents.float(), masked_latents.to(weight_dtype)
        if isinstance(text_encoder, TextEmbeddingCache):
            text = text_encoder.lookup(batch["caption"]).to(device, weight_dtype)
        else:
            ids = batch["input_ids"].to(device)
            attention_mask = None
            if getattr(text_encoder.config, "use_attention_mask", False):
                attention_mask = (ids != text_encoder.config.pad_token_id).long()
            text = text_encoder(ids, attention_mask=attention_mask)[0].to(weight_dtype)
    noise = batch["noise"].to(device, torch.float32)
    timesteps = batch["timestep"].to(device).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    mask = latent_mask(batch["repaint_mask"].to(device), latents.shape[2], latents.shape[3])
    model_in = torch.cat([noisy.to(weight_dtype), mask.to(weight_dtype), masked_latents], dim=1)
    down, mid = controlnet(
        model_in, timesteps, encoder_hidden_states=text, controlnet_cond=batch["hint"].to(device, weight_dtype),
        return_dict=False,
    )
    pred = unet(
        model_in, timesteps, encoder_hidden_states=text,
        down_block_additional_residuals=[r.to(weight_dtype) for r in down],
        mid_block_additional_residual=mid.to(weight_dtype), return_dict=False,
    )[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    return (loss, [*down, mid]) if return_residuals else loss


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    global_step: int
    losses: list  # (step, loss averaged over processes) per optimizer step of this session
    output_dir: str
    export_dir: Optional[str]
    seconds_per_step: list
    controlnet: object = None  # the trained ControlNet (unwrapped, raw weights)
    ema: object = None


def train(config: TrainConfig, *, accelerator=None) -> TrainResult:
    """Run (or resume) training. Returns the losses of this session; writes checkpoints, validation images and, when
    ``max_train_steps`` is reached, the exported ControlNet in ``<output_dir>/controlnet``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler

    os.makedirs(config.output_dir, exist_ok=True)
    report_to = config.report_to
    if report_to == "auto":
        report_to = "tensorboard" if tensorboard_available() else "none"
    if accelerator is None:
        # several processes without GPUs (torchrun / accelerate launch on CPU): accelerate's MULTI_CPU mode (gloo)
        cpu = config.cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
        accelerator = Accelerator(
            cpu=cpu,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=None if report_to == "none" else report_to,
            project_config=ProjectConfiguration(project_dir=config.output_dir,
                                                logging_dir=os.path.join(config.output_dir, "logs")),
        )
    device = accelerator.device
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
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    rows = tdata.read_manifest(config.data)
    vae, text_encoder, tokenizer, unet, noise_scheduler, sched_cfg, controlnet = load_models(config)
    for m in (vae, text_encoder, unet):
        m.requires_grad_(False)
        m.eval()
        m.to(device, dtype=weight_dtype)
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

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = config.batch_size * world
    accum = config.gradient_accumulation_steps
    steps_per_epoch = len(rows) // global_batch // accum
    if config.max_train_steps is None and config.num_train_epochs is None:
        raise InputError("say how long to train: --max-train-steps or --num-train-epochs")
    max_steps = config.max_train_steps
    if max_steps is None:
        max_steps = max(1, int(math.floor(config.num_train_epochs * max(1, steps_per_epoch))))

    lr = config.learning_rate
    if config.scale_lr:
        lr = lr * config.batch_size * accum * world
    optimizer = make_optimizer(controlnet.parameters(), dataclasses.replace(config, learning_rate=lr))
    # accelerate steps a prepared scheduler once per process: count warm-up and length in those steps
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * world,
                                 num_training_steps=max_steps * world)
    controlnet, optimizer, lr_scheduler = accelerator.prepare(controlnet, optimizer, lr_scheduler)
    raw_controlnet = accelerator.unwrap_model(controlnet)
    ema = EMA(raw_controlnet, config.ema_decay) if config.ema_decay > 0 else None

    global_step = 0
    resume = resolve_resume(config)
    if resume:
        accelerator.load_state(resume)
        with open(os.path.join(resume, TRAIN_STATE)) as fh:
            state = json.load(fh)
        global_step = int(state["global_step"])
        if state.get("world_size", world) * state.get("batch_size", config.batch_size) != global_batch:
            log.warning("resuming with a different global batch than the checkpoint's: the data order changes")
        if ema is not None and os.path.isfile(os.path.join(resume, EMA_FILE)):
            ema.load(os.path.join(resume, EMA_FILE))
        accelerator.print(f"resumed from {resume} at step {global_step}")

    if accelerator.is_main_process:
        with open(os.path.join(config.output_dir, RUN_CONFIG), "w") as fh:
            json.dump(config.to_json(), fh, indent=2)
        if report_to != "none":
            accelerator.init_trackers("salient_controlnet", config={k: str(v) for k, v in config.to_json().items()})

    sample_cfg = tdata.SampleConfig(
        resolution=config.resolution, resize_to=config.resize_to, empty_caption_prob=config.empty_caption_prob,
        mask_aug_prob=config.mask_aug_prob, mask_aug_max_blur=config.mask_aug_max_blur,
        mask_aug_max_pixels=config.mask_aug_max_pixels, seed=config.seed,
        latent_channels=vae.config.latent_channels, vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        num_train_timesteps=noise_scheduler.config.num_train_timesteps, latent_cache_crops=config.latent_cache_crops,
    )
    dataset = tdata.SalientTrainingDataset(rows, sample_cfg, tokenizer)
    if config.latent_cache:
        if config.mask_aug_prob > 0:
            raise InputError("--latent-cache cannot be combined with --mask-aug-prob (the augmentation changes the "
                             "masked photo the cache holds)")
        sample_cfg.latent_cache_dir = build_latent_cache(config, dataset, vae, accelerator, weight_dtype)
        if config.validation_steps <= 0:
            vae.encoder = None  # nothing encodes any more
            gc.collect()
    stop_step = max_steps if config.stop_after_steps is None else min(max_steps, global_step + config.stop_after_steps)
    sampler = tdata.ShardedBatchSampler(len(rows), config.batch_size, world_size=world, rank=rank, seed=config.seed,
                                        start_micro_step=global_step * accum, max_micro_steps=stop_step * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=tdata.collate,
                                         num_workers=config.num_workers, persistent_workers=False)
    validator = Validator(config, rows, sample_cfg, sched_cfg) if config.validation_steps > 0 else None
    if accelerator.is_main_process:
        log.info("training: %d rows, %d process(es) x batch %d x accumulation %d, steps %d -> %d of %d, lr %g",
                 len(rows), world, config.batch_size, accum, global_step, stop_step, max_steps, lr)

    in_backward = None
    if config.optimizer_in_backward:
        in_backward = TwoPassClippedStep(raw_controlnet.parameters(), getattr(optimizer, "optimizer", optimizer),
                                         config.max_grad_norm)

    losses, times = [], []
    running, micro = 0.0, 0
    record = open(os.path.join(config.output_dir, f"samples-rank{rank}.jsonl"), "a") if config.record_samples else None
    t0 = time.perf_counter()
    for batch in loader:
        with accelerator.accumulate(controlnet):
            loss = training_loss(batch, controlnet=controlnet, unet=unet, vae=vae, text_encoder=text_for_loss,
                                 noise_scheduler=noise_scheduler, weight_dtype=weight_dtype, device=device,
                                 return_residuals=in_backward is not None)
            if in_backward is not None:
                loss, residuals = loss
                # the UNet's backward once, down to the residuals; the ControlNet's inside the optimizer step
                in_backward.step(residuals, torch.autograd.grad(loss, residuals))
                del residuals
            else:
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(controlnet.parameters(), config.max_grad_norm)
                optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        running += float(loss.detach())
        micro += 1
        if record is not None:
            record.write(json.dumps({"step": global_step + 1, "index": batch["index"], "position": batch["position"],
                                     "rank": rank, "loss": float(loss.detach())}) + "\n")
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        step_loss = accelerator.reduce(torch.tensor(running / micro, device=device), reduction="mean").item()
        running, micro = 0.0, 0
        if ema is not None:
            ema.update(raw_controlnet)
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
        losses.append((global_step, step_loss))
        if accelerator.is_main_process and (global_step % max(1, config.log_every) == 0 or global_step == stop_step):
            log.info("step %d/%d loss %.5f lr %.3g (%.2f s/step)", global_step, max_steps, step_loss,
                     lr_scheduler.get_last_lr()[0], times[-1])
        if report_to != "none":
            accelerator.log({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
        if config.checkpointing_steps > 0 and global_step % config.checkpointing_steps == 0:
            save_checkpoint(accelerator, config, raw_controlnet, ema, global_step, world)
        if validator is not None and global_step % config.validation_steps == 0 and accelerator.is_main_process:
            validator.run(accelerator, raw_controlnet, ema, vae, text_encoder, tokenizer, unet, global_step, weight_dtype)
        t0 = time.perf_counter()

    if in_backward is not None:
        in_backward.remove()  # the returned ControlNet carries no hooks of ours
    accelerator.wait_for_everyone()
    export_dir = None
    if global_step >= max_steps:
        if config.checkpointing_steps <= 0 or global_step % config.checkpointing_steps:
            save_checkpoint(accelerator, config, raw_controlnet, ema, global_step, world)
        # gathered from every process under DeepSpeed ZeRO-3 / FSDP (all processes take part)
        weights = ema.shadow if ema is not None else accelerator.get_state_dict(controlnet)
        if accelerator.is_main_process:
            from .export import export_controlnet

            export_dir = os.path.join(config.output_dir, "controlnet")
            export_controlnet(raw_controlnet, export_dir, fp16=config.export_fp16, state_dict=weights,
                              metadata=run_metadata(config, global_step, len(rows), ema is not None))
    elif config.stop_after_steps is not None and (config.checkpointing_steps <= 0
                                                  or global_step % config.checkpointing_steps):
        save_checkpoint(accelerator, config, raw_controlnet, ema, global_step, world)
    accelerator.wait_for_everyone()
    if report_to != "none":
        accelerator.end_training()
    if record is not None:
        record.close()
    return TrainResult(global_step, losses, config.output_dir, export_dir, times, raw_controlnet, ema)


def run_metadata(config: TrainConfig, step: int, rows: int, ema: bool) -> dict:
    return {
        "base_model": os.path.abspath(config.base_model),
        "initialised_from": os.path.abspath(config.controlnet) if config.controlnet else "from_unet (SI2 UNet)",
        "steps": step,
        "data": {"manifest": os.path.abspath(config.data), "rows": rows},
        "weights": "EMA" if ema else "raw",
        "recipe": {k: v for k, v in config.to_json().items()
                   if k in ("resolution", "resize_to", "empty_caption_prob", "mask_aug_prob", "batch_size",
                            "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps",
                            "adam_weight_decay", "max_grad_norm", "mixed_precision", "ema_decay", "seed")},
    }


def save_checkpoint(accelerator, config: TrainConfig, raw_controlnet, ema, step: int, world: int) -> str:
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


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------
class Validator:
    """Validation images through models/pipeline.py: the SI2 baseline (ControlNet scale 0) and the ControlNet side by
    side, same seed; with ``validation_sam`` also the object-expansion score of both."""

    def __init__(self, config: TrainConfig, rows, sample_cfg, sched_cfg):
        self.config = config
        self.sched_cfg = sched_cfg
        self.images, self.masks, self.prompts = self._inputs(rows, sample_cfg)
        self.sam = None
        self.history: list[dict] = []

    def _inputs(self, rows, sample_cfg):
        cfg = self.config
        images, masks, prompts = [], [], []
        if cfg.validation_images:
            if len(cfg.validation_masks) != len(cfg.validation_images):
                raise InputError("give one --validation-mask (object = white) per --validation-image")
            for p, m in zip(cfg.validation_images, cfg.validation_masks):
                ds = tdata.SalientTrainingDataset([{"image": p, "mask": m, "captions": []}],
                                                  dataclasses.replace(sample_cfg, center_crop=True))
                im, mk = ds.load_crop(0, None)
                images.append(im.permute(1, 2, 0))
                masks.append(mk)
            prompts = list(cfg.validation_prompts) or [""]
        else:
            ds = tdata.SalientTrainingDataset(rows, dataclasses.replace(sample_cfg, center_crop=True))
            for i in range(min(cfg.validation_rows, len(rows))):
                im, mk = ds.load_crop(i, None)
                images.append(im.permute(1, 2, 0))
                masks.append(mk)
                prompts.append(ds.caption(i, None))
            if cfg.validation_prompts:
                prompts = list(cfg.validation_prompts)
        if len(prompts) == 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise InputError(f"{len(prompts)} validation prompts for {len(images)} validation images")
        return torch.stack(images), torch.stack(masks), prompts

    @torch.no_grad()
    def run(self, accelerator, controlnet, ema, vae, text_encoder, tokenizer, unet, step, weight_dtype):
        import numpy as np
        from PIL import Image

        from ..models.pipeline import SalientBackgroundPipeline, make_scheduler

        cfg = self.config
        was_training = controlnet.training
        controlnet.eval()
        backup = None
        if ema is not None:  # validate the weights the export will hold
            backup = {k: v.detach().clone() for k, v in controlnet.state_dict().items()}
            controlnet.load_state_dict({k: v.to(backup[k].dtype) for k, v in ema.shadow.items()})
        try:
            pipe = SalientBackgroundPipeline(vae, text_encoder, tokenizer, unet, make_scheduler("unipc", self.sched_cfg),
                                             controlnet=controlnet)
            outs = {}
            for name, scale in (("si2", 0.0), ("controlnet", 1.0)):
                gens = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(self.prompts))]
                outs[name] = pipe(self.images, self.masks, self.prompts, num_inference_steps=cfg.validation_inference_steps,
                                  guidance_scale=cfg.validation_guidance, controlnet_conditioning_scale=scale,
                                  generator=gens, output_type="pt", show_progress=False).images
        finally:
            if backup is not None:
                controlnet.load_state_dict(backup)
            controlnet.train(was_training)
        hint = (1.0 - self.masks)[..., None].expand(-1, -1, -1, 3)
        grid = torch.cat([torch.cat([self.images[i], hint[i], outs["si2"][i], outs["controlnet"][i]], dim=1)
                          for i in range(len(self.prompts))], dim=0)
        folder = os.path.join(cfg.output_dir, "validation")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step-{step:06d}.png")
        Image.fromarray((grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)
        record = {"step": step, "image": os.path.relpath(path, cfg.output_dir), "columns": ["photo", "hint", "SI2", "ControlNet"],
                  "prompts": self.prompts}
        if cfg.validation_sam:
            from ..models.expansion import score_expansion
            from ..models.sam import loading

            if self.sam is None:
                self.sam = loading.load_sam(cfg.validation_sam).model
            for name in ("si2", "controlnet"):
                run = score_expansion(self.sam, outs[name], self.masks, seed=cfg.seed)
                record[f"expansion_{name}"] = [s.as_dict() for s in run.scores]
                record[f"mean_relative_expansion_{name}"] = float(np.nanmean([s.expansion_relative for s in run.scores]))
        with open(os.path.join(folder, "validation.jsonl"), "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", np.asarray(Image.open(path)), step, dataformats="HWC")
        self.history.append(record)
        log.info("validation images at step %d: %s", step, path)
        return record
