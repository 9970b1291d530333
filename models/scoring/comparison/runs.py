"""The runs of a comparison: each a ``generate`` output folder (its ``manifest.json``), matched by input id.

The first run is the baseline (``generate --controlnet-scale 0``: the base's plain inpainting); every other run is
compared with it on the inputs all runs share. An input's framed photo and mask are taken from the baseline run
(``generate`` frames an input the same way whatever the ControlNet, so they are the same files' content).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...errors import InputError
from ...runs.journal import read_merged_manifest
from .measure import ImageJob, PartResults, per_job
from .table import RunMeasurements

log = logging.getLogger("salient_background")


@dataclass
class Run:
    name: str
    folder: str
    rows: dict = field(default_factory=dict)  # input id -> manifest row
    controlnet_scale: float = math.nan


def parse_run(spec: str) -> tuple[str, str]:
    """``NAME=FOLDER`` or ``FOLDER`` (named after the folder)."""
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = os.path.basename(os.path.normpath(spec)), spec
    if not name or not folder:
        raise InputError(f"--runs {spec!r}: give NAME=FOLDER or FOLDER")
    return name, folder


def read_run(name: str, folder: str) -> Run:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isdir(folder):
        raise InputError(f"run {name!r}: {folder!r} is not a folder (give a generate --output-dir)")
    data = read_merged_manifest(path)
    rows = data.get("rows") if isinstance(data, dict) else None
    if not rows:
        raise InputError(f"run {name!r}: {path!r} is missing or lists no images (give a finished generate --output-dir)")
    run = Run(name, os.path.abspath(folder))
    for row in rows:
        run.rows[row["id"]] = row
    scales = {float(r.get("controlnet_scale", math.nan)) for r in rows}
    run.controlnet_scale = scales.pop() if len(scales) == 1 else math.nan
    return run


def read_runs(specs: Sequence[str]) -> list[Run]:
    """The runs of ``--runs`` (one run alone gives its table without comparison)."""
    if not specs:
        raise InputError("--runs needs a run folder: the baseline first, then the models to compare with it")
    runs = [read_run(*parse_run(s)) for s in specs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"--runs: two runs share a name ({', '.join(names)}); name them NAME=FOLDER")
    if len(runs) > 1 and runs[0].controlnet_scale != 0:
        log.warning("the baseline run %r was not made with --controlnet-scale 0 (its scale: %s)", runs[0].name,
                    runs[0].controlnet_scale)
    return runs


def shared_inputs(runs: Sequence[Run]) -> list[str]:
    """The input ids every run has (sorted); the others are named in a warning."""
    ids = set(runs[0].rows)
    for run in runs[1:]:
        ids &= set(run.rows)
    left_out = sorted(set().union(*(r.rows for r in runs)) - ids)
    if left_out:
        log.warning("%d input(s) are not in every run and are left out of the table, e.g. %s", len(left_out), left_out[0])
    if not ids:
        raise InputError("the runs share no input id: compare runs of the same inputs (same photos, same ids)")
    return sorted(ids)


def _abs(run: Run, path: str) -> str:
    return path if not path or os.path.isabs(path) else os.path.join(run.folder, path)


def image_jobs(runs: Sequence[Run], ids: Sequence[str]) -> list[ImageJob]:
    """Every image of every run for the shared inputs; the images of a seed missing from a run are kept (the
    per-input means use what each run has)."""
    base = runs[0]
    jobs = []
    for run in runs:
        for input_id in ids:
            row, ref = run.rows[input_id], base.rows[input_id]
            for im in row.get("images", []):
                jobs.append(ImageJob(run.name, input_id, int(im["seed"]), _abs(run, im["generated"]),
                                     mask=_abs(base, ref["mask"]), photo=_abs(base, ref["original"]),
                                     prompt=row.get("prompt") or ""))
    return jobs


def input_rows(runs: Sequence[Run], ids: Sequence[str]) -> list[dict]:
    """{id, source[, dataset, category]} of each input (from the baseline's manifest) for grouping."""
    return [{k: runs[0].rows[i].get(k) for k in ("id", "source", "dataset", "category")} for i in ids]


def assemble(runs: Sequence[Run], ids: Sequence[str], results: Sequence[PartResults]) -> list[RunMeasurements]:
    """Each run's per-input values (means over its images of the per-image scores; per-input scores as they are)
    and its images' features."""
    out = [RunMeasurements(r.name) for r in runs]
    by_name = {m.name: m for m in out}
    per_image_scores: dict = {}
    for res in results:
        for key, m in per_job(res).items():
            run = by_name[key[0]]
            if res.part.per_input:
                run.per_input.setdefault(key[1], {}).update(m.scores)
                continue
            for name, value in m.scores.items():
                per_image_scores.setdefault((key[0], key[1], name), {})[key[2]] = value
            for name, vector in m.features.items():
                run.features.setdefault(name, {}).setdefault(key[1], []).append((key[2], vector))
    for (run_name, input_id, name), by_seed in per_image_scores.items():
        values = np.array([np.nan if v is None else v for _, v in sorted(by_seed.items())], dtype=np.float64)
        by_name[run_name].per_input.setdefault(input_id, {})[name] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    for run in out:
        for name, per in run.features.items():
            for input_id in per:
                per[input_id] = [v for _, v in sorted(per[input_id], key=lambda sv: sv[0])]
        source = next(r for r in runs if r.name == run.name)
        run.images = {i: len(source.rows[i].get("images", [])) for i in ids}
    return out
