"""``--validation-metrics``: the comparison table (``models/scoring/comparison``) on a held-out split, during training.

The last ``--validation-holdout`` rows of the manifest are held out of training. At the first validation the base
alone (ControlNet scale 0, the SI2 baseline) renders each held-out input with ``--validation-metric-seeds`` seeds,
once: its images stay in ``<output_dir>/validation/metrics/baseline/`` and a resumed run reuses them. At every
validation the ControlNet (EMA weights when EMA is on) renders the same inputs with the same seeds into
``step-<step>/``; both folders are written as ``generate`` runs, so the very code of ``evaluate --runs`` measures
them (images measured once, in ``metrics/cache/``) and writes ``step-<step>/table/`` (table.md/.csv/.json). The
first block's numbers (all held-out inputs) go to ``validation.jsonl`` under ``metrics`` and to TensorBoard as
``validation_metrics/<metric>/<baseline|controlnet>`` plus ``validation_metrics/expansion_ratio``.

The metrics are those named (comma-separated, as ``evaluate --metrics``) or ``all`` = every one whose model is on
disk (``--validation-models-dir``, else the ComfyUI models folder; SAM from ``--validation-sam``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..models.errors import InputError

log = logging.getLogger("salient_background")

BASELINE, CONTROLNET = "baseline", "controlnet"


def split_holdout(config, rows: list) -> tuple[list, list]:
    """(training rows, held-out rows): the last ``validation_holdout`` rows are held out when
    ``validation_metrics`` is set; the split depends on the manifest's order only, so a resumed run keeps it."""
    if not config.validation_metrics:
        return rows, []
    if config.validation_steps <= 0:
        raise InputError("--validation-metrics needs --validation-steps N (how often to compute the table)")
    n = config.validation_holdout
    if n < 2 or len(rows) - n < config.batch_size:
        raise InputError(f"--validation-holdout {n}: hold out at least 2 of the {len(rows)} rows and leave at least "
                         f"a batch ({config.batch_size}) to train on")
    return rows[:-n], rows[-n:]


def _save_png(array_hwc: torch.Tensor, path: str) -> None:
    import numpy as np
    from PIL import Image

    from ..models.runs.atomic import write_atomically

    data = (array_hwc.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(data[..., 0] if data.shape[-1] == 1 else data)
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def _read_png(path: str) -> torch.Tensor:
    """[1,H,W,3] in 0..1 of a PNG this module wrote."""
    from PIL import Image

    from ..models.imaging.image_ops import pil_to_image

    with Image.open(path) as image:
        image.load()
        return pil_to_image(image)[0]


def _read_mask_png(path: str) -> torch.Tensor:
    return _read_png(path)[..., 0]


@dataclass
class HeldOut:
    images: torch.Tensor  # [N,H,W,3]
    masks: torch.Tensor  # [N,H,W], 1 = object
    prompts: list
    ids: list = field(default_factory=list)


class MetricValidation:
    """The table of the held-out inputs at each validation step (see the module docstring)."""

    def __init__(self, config, held_out: HeldOut, device):
        self.config = config
        self.held = held_out
        self.device = device
        self.folder = os.path.join(config.output_dir, "validation", "metrics")
        self.seeds = [config.seed + 1000 * k for k in range(config.validation_metric_seeds)]  # image i: seed + i
        self._built = None

    def _write_inputs(self) -> None:
        for folder in ("inputs", "masks"):
            os.makedirs(os.path.join(self.folder, folder), exist_ok=True)
        for i, input_id in enumerate(self.held.ids):
            _save_png(self.held.images[i], os.path.join(self.folder, "inputs", f"{input_id}.png"))
            _save_png(self.held.masks[i][..., None], os.path.join(self.folder, "masks", f"{input_id}.png"))

    def _write_run(self, name: str, render: Callable[[float, int], torch.Tensor], scale: float) -> str:
        """Render every held-out input at every seed into ``<name>/generated`` and write its manifest.json in the
        ``generate`` layout; returns the folder."""
        from ..models.runs.atomic import write_json_atomically

        folder = os.path.join(self.folder, name)
        os.makedirs(os.path.join(folder, "generated"), exist_ok=True)
        rows = {i: {"id": i, "mask": os.path.join("..", "masks", f"{i}.png"), "original": os.path.join(
            "..", "inputs", f"{i}.png"), "source": "", "prompt": p, "controlnet_scale": scale, "images": []}
            for i, p in zip(self.held.ids, self.held.prompts)}
        for seed in self.seeds:
            images = render(scale, seed)
            for k, input_id in enumerate(self.held.ids):
                name_png = os.path.join("generated", f"{input_id}_s{seed}.png")
                _save_png(images[k], os.path.join(folder, name_png))
                rows[input_id]["images"].append({"seed": seed, "generated": name_png, "restored": ""})
        write_json_atomically(os.path.join(folder, "manifest.json"), {"rows": [rows[i] for i in sorted(rows)]})
        return folder

    def _parts(self):
        from ..models.scoring.comparison.parts import PartSettings, Readers, build_parts, parse_metrics

        if self._built is None:
            wanted = [] if self.config.validation_metrics == "all" else parse_metrics(self.config.validation_metrics)
            settings = PartSettings(Readers(_read_png, _read_mask_png), sam_path=self.config.validation_sam,
                                    seed=self.config.seed, models_dir=self.config.validation_models_dir)
            self._built = build_parts(wanted, settings, self.device)
            for missing in self._built.missing:
                log.warning("validation metrics: left out %s", missing)
            if not self._built.parts:
                raise InputError("--validation-metrics: no metric model found (" + "; ".join(self._built.missing) + ")")
        return self._built

    def run(self, step: int, render: Callable[[float, int], torch.Tensor]) -> dict:
        """The table at ``step``; ``render(scale, seed)`` -> [N,H,W,3] images of the held-out inputs. Returns the
        record's ``metrics`` entry."""
        from ..models.runs.ranks import Ranks
        from ..models.scoring.comparison import compare, grouping, runs as run_io
        from ..models.scoring.comparison.cache import MeasurementCache
        from ..models.scoring.comparison.measure import ImageJob

        self._write_inputs()  # here, not in __init__: only the main process validates
        base = os.path.join(self.folder, BASELINE)
        if not os.path.isfile(os.path.join(base, "manifest.json")):  # measured once, at the first validation
            self._write_run(BASELINE, render, 0.0)
        step_folder = self._write_run(f"step-{step:06d}", render, 1.0)
        runs = [run_io.read_run(BASELINE, base), run_io.read_run(CONTROLNET, step_folder)]
        ids = run_io.shared_inputs(runs)
        jobs = run_io.image_jobs(runs, ids)
        built, ranks = self._parts(), Ranks()
        cache = MeasurementCache(os.path.join(self.folder, "cache"))
        results = compare.measure_runs(built.parts, jobs, cache, ranks)
        reference_jobs = [ImageJob("reference", i, 0, os.path.join(self.folder, "inputs", f"{i}.png")) for i in ids]
        reference = compare.reference_features(built.feature_parts, reference_jobs, cache, ranks)
        groups = {i: (grouping.ALL, None) for i in ids}
        table = compare.make_table(runs, ids, groups, results, built.set_metrics, reference,
                                   resamples=self.config.validation_bootstrap, seed=0,
                                   settings={"step": step, "missing": built.missing})
        out = os.path.join(step_folder, "table")
        os.makedirs(out, exist_ok=True)
        compare.write_table(out, table)
        return summarise(table)


def summarise(table: dict) -> dict:
    """The first block of a table as the validation record's ``metrics``: each run's values, the expansion ratio and
    every paired difference (value, interval, moved)."""
    block = table["blocks"][0]
    record = {row["run"]: row["values"] for row in block["rows"]}
    comparison = block["comparisons"][0]
    record["expansion_ratio"] = comparison.get("expansion_ratio")
    record["differences"] = comparison["differences"]
    record["inputs"] = block["inputs"]
    return record


def log_to_tensorboard(accelerator, metrics: dict, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name != "tensorboard":
            continue
        for run in (BASELINE, CONTROLNET):
            for name, value in metrics.get(run, {}).items():
                if value is not None:
                    tracker.writer.add_scalar(f"validation_metrics/{name}/{run}", value, step)
        ratio = (metrics.get("expansion_ratio") or {}).get("value")
        if ratio is not None:
            tracker.writer.add_scalar("validation_metrics/expansion_ratio", ratio, step)


def held_out_inputs(rows: list, sample_cfg) -> Optional[HeldOut]:
    """The held-out rows as centre crops with their first caption (as the validation images are made)."""
    import dataclasses

    from ..models.runs.item_ids import safe_name
    from . import data as tdata

    if not rows:
        return None
    ds = tdata.SalientTrainingDataset(rows, dataclasses.replace(sample_cfg, center_crop=True))
    images, masks, prompts = [], [], []
    for i in range(len(rows)):
        image, mask = ds.load_crop(i, None)
        images.append(image.permute(1, 2, 0))
        masks.append(mask)
        prompts.append(ds.caption(i, None))
    ids = [f"{k:04d}_{safe_name(os.path.splitext(os.path.basename(r['image']))[0])}" for k, r in enumerate(rows)]
    return HeldOut(torch.stack(images), torch.stack(masks), prompts, ids)
