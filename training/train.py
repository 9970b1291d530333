"""The salient-aware ControlNet trainer (accelerate; single process, multi-GPU, multi-node, DeepSpeed/FSDP by config).

This module is the trainer's public face: ``from salient_background.training.train import train, TrainConfig`` runs
a training from Python (the command line is ``python -m salient_background training train``). Each part lives in a
module of its own:

* :mod:`training.config` -- :class:`TrainConfig`, every setting (one command-line flag each);
* :mod:`training.base_models` -- the base's frozen models and the new ControlNet;
* :mod:`training.caches` -- the caption-embedding cache and the latent cache;
* :mod:`training.loss` -- the objective of one batch;
* :mod:`training.checkpoints` -- checkpoints (save, list, resume) and the EMA of the weights;
* :mod:`training.validation` -- validation images, the base's plain inpainting (SI2) and the ControlNet side by side;
* :mod:`training.loop` -- :func:`train`, the run itself.
"""
from __future__ import annotations

from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
