"""The trainer's settings: :class:`TrainConfig` (one field per command-line flag) and the run's metadata."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional

from ..models.errors import InputError

PAPER_CONDITIONING_CHANNELS = (16, 32, 96, 256)
CHECKPOINTING_CHOICES = ("off", "controlnet", "all")


@dataclass
class TrainConfig:
    """Every trainer setting; the CLI maps one flag to each field (``--learning-rate`` -> ``learning_rate``)."""

    data: str = ""  # manifest (.jsonl/.csv) or the dataset folder holding one
    base_model: str = ""  # local inpainting diffusers folder (or the photo-background-generation folder, or SD2's single file)
    base: Optional[str] = None  # sd2-inpainting, sd15-inpainting or sdxl-inpainting; None = read from base_model
    vae: Optional[str] = None  # a VAE folder to use instead of the base's (e.g. an fp16-safe SDXL VAE)
    output_dir: str = "controlnet-training"
    controlnet: Optional[str] = None  # fine-tune from this checkpoint (any form the loader reads); None = from_unet
    conditioning_channels: tuple = PAPER_CONDITIONING_CHANNELS
    # data recipe
    resolution: Optional[int] = None  # None = the base's (512; SDXL 1024)
    resize_to: Optional[int] = None  # short side before the crop; None = 768 for SD2/SD1.5 (the paper), SDXL the crop's
    empty_caption_prob: float = 0.1
    mask_aug_prob: float = 0.0
    mask_aug_max_blur: float = 8.0
    mask_aug_max_pixels: int = 16
    num_workers: int = 0
    # train on the rows whose files pass the check at the start and list the others in the run folder; without it a
    # bad row stops the run before any model is loaded
    skip_bad_rows: bool = False
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
    # the comparison table (evaluate --runs) on held-out rows at every validation: "all" (every metric whose model is
    # on disk) or names as evaluate --metrics; None = off (training/validation_metrics.py)
    validation_metrics: Optional[str] = None
    validation_holdout: int = 8  # with validation_metrics: the manifest's last N rows are held out of training
    validation_metric_seeds: int = 2  # images per held-out input (LPIPS diversity needs 2)
    validation_bootstrap: int = 1000  # bootstrap resamples of the held-out inputs
    validation_models_dir: Optional[str] = None  # models folder holding metrics/ (default: ComfyUI's)
    export_fp16: bool = False  # the final export's weights dtype
    record_samples: bool = False  # write samples-rank<r>.jsonl: which rows/noise positions each process trained on

    def __post_init__(self):
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "all" if self.gradient_checkpointing else "off"
        if self.gradient_checkpointing not in CHECKPOINTING_CHOICES:
            raise InputError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}, "
                             f"not {self.gradient_checkpointing!r}")

    def for_base(self, base) -> "TrainConfig":
        """This config with the base's name and the base's defaults filled in where the user gave none."""
        resolution = self.resolution or base.resolution
        resize_to = self.resize_to or max(resolution, base.train_resize_to or resolution)
        return dataclasses.replace(self, base=base.name, resolution=resolution, resize_to=resize_to)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["conditioning_channels"] = list(self.conditioning_channels)
        return d


def run_metadata(config: TrainConfig, step: int, rows: int, ema: bool) -> dict:
    """What the exported ControlNet records about the run that made it (``salient_controlnet.json``)."""
    return {
        "base": config.base,
        "base_model": os.path.abspath(config.base_model),
        "initialised_from": os.path.abspath(config.controlnet) if config.controlnet else "from_unet (the base's UNet)",
        "steps": step,
        "data": {"manifest": os.path.abspath(config.data), "rows": rows},
        "weights": "EMA" if ema else "raw",
        "recipe": {k: v for k, v in config.to_json().items()
                   if k in ("resolution", "resize_to", "empty_caption_prob", "mask_aug_prob", "batch_size",
                            "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps",
                            "adam_weight_decay", "max_grad_norm", "mixed_precision", "ema_decay", "seed")},
    }
