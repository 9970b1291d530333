"""Validation during training: the SI2 baseline and the ControlNet side by side on a few fixed inputs.

Every ``validation_steps`` steps the main process renders, through models/generation/pipeline.py (SDXL:
pipeline_xl.py), each validation photo with the ControlNet off (scale 0: the base's plain inpainting) and on, same
seed, and writes the grid photo | hint | SI2 | ControlNet to ``<output_dir>/validation/step-<step>.png`` with a line
in ``validation.jsonl`` (and, given a SAM checkpoint, the object-expansion score of both). With
``--validation-metrics`` the comparison table of held-out rows is added (``validation_metrics.py``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional

import torch

from ..models.errors import InputError
from . import data as tdata
from .config import TrainConfig

log = logging.getLogger("salient_background")


def _pipeline(vae, text_encoder, tokenizer, unet, scheduler, controlnet):
    """The pack's pipeline for the run's base: SDXL's when there are two text encoders (given as lists)."""
    if isinstance(text_encoder, (list, tuple)):
        from ..models.generation.pipeline_xl import SalientBackgroundXLPipeline

        return SalientBackgroundXLPipeline(vae, *text_encoder, *tokenizer, unet, scheduler, controlnet=controlnet)
    from ..models.generation.pipeline import SalientBackgroundPipeline

    return SalientBackgroundPipeline(vae, text_encoder, tokenizer, unet, scheduler, controlnet=controlnet)


class Validator:
    """Validation images through models/generation/pipeline.py: the SI2 baseline (ControlNet scale 0) and the ControlNet side by
    side, same seed; with ``validation_sam`` also the object-expansion score of both."""

    def __init__(self, config: TrainConfig, rows, sample_cfg, sched_cfg, held_out_rows=(), device=None):
        self.config = config
        self.sched_cfg = sched_cfg
        self.images, self.masks, self.prompts = self._inputs(rows, sample_cfg)
        self.sam = None
        self.history: list[dict] = []
        self.metrics = None  # --validation-metrics: the comparison table on the held-out rows
        if config.validation_metrics:
            from .validation_metrics import MetricValidation, held_out_inputs

            self.metrics = MetricValidation(config, held_out_inputs(list(held_out_rows), sample_cfg), device)

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
        """Render, save and score the validation images at ``step``; returns the record written."""
        outs, metrics = self._generate(controlnet, ema, vae, text_encoder, tokenizer, unet, step)
        path = self._save_grid(outs, step)
        record = {"step": step, "image": os.path.relpath(path, self.config.output_dir),
                  "columns": ["photo", "hint", "SI2", "ControlNet"], "prompts": self.prompts}
        if self.config.validation_sam:
            record.update(self._expansion_scores(outs))
        if metrics is not None:
            from .validation_metrics import log_to_tensorboard

            record["metrics"] = metrics
            log_to_tensorboard(accelerator, metrics, step)
        with open(os.path.join(os.path.dirname(path), "validation.jsonl"), "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np
                from PIL import Image

                tracker.writer.add_image("validation", np.asarray(Image.open(path)), step, dataformats="HWC")
        self.history.append(record)
        log.info("validation images at step %d: %s", step, path)
        return record

    def _generate(self, controlnet, ema, vae, text_encoder, tokenizer, unet, step: int) -> tuple[dict, Optional[dict]]:
        """({"si2": images, "controlnet": images} (ControlNet scale 0 and 1, same seeds), the held-out table's
        summary or None), with the EMA weights when EMA is on (the weights the export will hold); the ControlNet is
        left as it was found."""
        from ..models.generation.pipeline import make_scheduler

        cfg = self.config
        was_training = controlnet.training
        controlnet.eval()
        backup = None
        if ema is not None:
            backup = {k: v.detach().clone() for k, v in controlnet.state_dict().items()}
            controlnet.load_state_dict({k: v.to(backup[k].dtype) for k, v in ema.shadow.items()})
        try:
            pipe = _pipeline(vae, text_encoder, tokenizer, unet, make_scheduler("unipc", self.sched_cfg), controlnet)
            outs = {name: self._render(pipe, self.images, self.masks, self.prompts, scale, cfg.seed)
                    for name, scale in (("si2", 0.0), ("controlnet", 1.0))}
            metrics = None
            if self.metrics is not None:
                held = self.metrics.held
                # the held-out set may be larger than the validation images: no more at once than a training batch
                metrics = self.metrics.run(step, lambda scale, seed: self._render(
                    pipe, held.images, held.masks, held.prompts, scale, seed, chunk=cfg.batch_size))
        finally:
            if backup is not None:
                controlnet.load_state_dict(backup)
            controlnet.train(was_training)
        return outs, metrics

    def _render(self, pipe, images, masks, prompts, scale: float, seed: int, chunk: Optional[int] = None) -> torch.Tensor:
        """Images [N,H,W,3] of the pipeline at ControlNet ``scale``; image i from seed ``seed + i``; ``chunk`` images
        per pipeline call (None: all at once)."""
        cfg, out = self.config, []
        chunk = max(1, chunk or len(prompts))
        for start in range(0, len(prompts), chunk):
            end = min(len(prompts), start + chunk)
            gens = [torch.Generator().manual_seed(seed + i) for i in range(start, end)]
            out.append(pipe(images[start:end], masks[start:end], prompts[start:end],
                            num_inference_steps=cfg.validation_inference_steps, guidance_scale=cfg.validation_guidance,
                            controlnet_conditioning_scale=scale, generator=gens, output_type="pt",
                            show_progress=False).images)
        return torch.cat(out)

    def _save_grid(self, outs: dict, step: int) -> str:
        """One row per validation input: photo | hint | SI2 | ControlNet; returns the PNG's path."""
        import numpy as np
        from PIL import Image

        hint = (1.0 - self.masks)[..., None].expand(-1, -1, -1, 3)
        grid = torch.cat([torch.cat([self.images[i], hint[i], outs["si2"][i], outs["controlnet"][i]], dim=1)
                          for i in range(len(self.prompts))], dim=0)
        folder = os.path.join(self.config.output_dir, "validation")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step-{step:06d}.png")
        Image.fromarray((grid.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)
        return path

    def _expansion_scores(self, outs: dict) -> dict:
        """The object-expansion score (SAM) of the SI2 and ControlNet images, per image and mean relative."""
        import numpy as np

        from ..models.scoring.expansion import score_expansion
        from ..models.networks.sam import loading

        if self.sam is None:
            self.sam = loading.load_sam(self.config.validation_sam).model
        record = {}
        for name in ("si2", "controlnet"):
            run = score_expansion(self.sam, outs[name], self.masks, seed=self.config.seed)
            record[f"expansion_{name}"] = [s.as_dict() for s in run.scores]
            record[f"mean_relative_expansion_{name}"] = float(np.nanmean([s.expansion_relative for s in run.scores]))
        return record
