"""The salient-aware ControlNet trainer (accelerate; single process, multi-GPU, multi-node, DeepSpeed/FSDP by config).

This module is the trainer's public face; each part lives in a module of its own:

* :mod:`training.config` -- :class:`TrainConfig`, every setting (one command-line flag each);
* :mod:`training.caches` -- the caption-embedding cache and the latent cache;
* :mod:`training.loss` -- the objective of one batch;
* :mod:`training.checkpoints` -- checkpoints (save, list, resume) and the EMA of the weights;
* :mod:`training.validation` -- validation images, SI2 and ControlNet side by side;
* :mod:`training.loop` -- :func:`train`, the run itself.

``from salient_background.training.train import train, TrainConfig`` keeps working, as do the other names below.
"""
from __future__ import annotations

from .caches import TextEmbeddingCache, build_latent_cache
from .checkpoints import (CHECKPOINT_PREFIX, CONTROLNET_CONFIG, EMA, EMA_FILE, RUN_CONFIG, TRAIN_STATE,
                          list_checkpoints, resolve_resume, save_checkpoint)
from .config import CHECKPOINTING_CHOICES, PAPER_CONDITIONING_CHANNELS, TrainConfig, run_metadata
from .loop import TrainResult, load_models, make_optimizer, tensorboard_available, train
from .loss import scaling_factor, training_loss
from .validation import Validator

__all__ = [
    "CHECKPOINTING_CHOICES", "CHECKPOINT_PREFIX", "CONTROLNET_CONFIG", "EMA", "EMA_FILE", "PAPER_CONDITIONING_CHANNELS",
    "RUN_CONFIG", "TRAIN_STATE", "TextEmbeddingCache", "TrainConfig", "TrainResult", "Validator", "build_latent_cache",
    "list_checkpoints", "load_models", "make_optimizer", "resolve_resume", "run_metadata", "save_checkpoint",
    "scaling_factor", "tensorboard_available", "train", "training_loss",
]
