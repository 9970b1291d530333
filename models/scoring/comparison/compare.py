"""A comparison from start to end, shared by ``evaluate --runs`` and the trainer's validation: measure every image
of every run (sharded, cached), the reference set's features, then the table and the contact sheets."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from . import contact_sheet, grouping, runs as run_io, table
from .cache import MeasurementCache
from .measure import Digests, ImageJob, PartResults, measure_part, per_job

REFERENCE_FEATURES = "reference_features.npz"


def measure_runs(parts: Sequence, jobs: Sequence[ImageJob], cache: MeasurementCache, ranks, *, batch_size: int = 8,
                 on_done: Optional[Callable[[int], None]] = None, digest: Optional[Digests] = None) -> list[PartResults]:
    digest = digest or Digests()
    return [measure_part(part, jobs, cache, ranks, digest=digest, batch_size=batch_size, on_done=on_done)
            for part in parts]


def reference_features(feature_parts: Sequence, reference_jobs: Sequence[ImageJob], cache: MeasurementCache, ranks,
                       *, batch_size: int = 8, digest: Optional[Digests] = None) -> dict:
    """{feature name: [N, d] float64} of the reference photos (sorted by path), measured once and cached."""
    features: dict = {}
    for part in feature_parts:
        res = measure_part(part, reference_jobs, cache, ranks, digest=digest or Digests(), batch_size=batch_size)
        for key in sorted(res.results, key=lambda k: res.units[k][0].image):
            for name, vector in res.results[key].features.items():
                features.setdefault(name, []).append(vector)
    return {name: np.stack(v).astype(np.float64) for name, v in features.items()}


def read_reference(path: str) -> dict:
    """A reference ``.npz``: the features a table wrote (``reference_features.npz``: one [N, d] array per feature)
    or FID statistics (``mu``, ``sigma``: what ``FeatureStatistics.save`` and pytorch-fid write; FID only)."""
    from ...errors import InputError

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name].astype(np.float64) for name in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"reference {path!r} is not a readable .npz: {exc}") from None
    if "mu" in arrays and "sigma" in arrays:
        return {"inception": table.GaussianStatistics(arrays["mu"], arrays["sigma"])}
    bad = [k for k, v in arrays.items() if v.ndim != 2]
    if bad or not arrays:
        raise InputError(f"reference {path!r} holds neither features ([N, d] arrays) nor mu/sigma statistics")
    return arrays


def make_table(runs: Sequence, ids: Sequence[str], groups: dict, results: Sequence[PartResults], set_metrics: Sequence,
               reference: dict, *, resamples: int, seed: int, settings: dict) -> dict:
    from .measure import failed_images

    measured = run_io.assemble(runs, ids, results)
    result = table.build_table(measured, grouping.blocks(groups), set_metrics, reference, resamples=resamples,
                               seed=seed, settings=settings)
    failed = failed_images(results)
    if failed:
        result["failed"] = failed
    return result


def write_table(out: str, result: dict) -> None:
    from ...runs.atomic import write_atomically, write_json_atomically

    for name, text in (("table.md", table.render_markdown(result)), ("table.csv", table.render_csv(result))):
        def write(tmp, text=text):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)

        write_atomically(os.path.join(out, name), write)
    write_json_atomically(os.path.join(out, "table.json"), result)


def write_reference(out: str, reference: dict) -> None:
    from ...runs.atomic import write_atomically

    arrays = {k: v for k, v in reference.items() if isinstance(v, np.ndarray)}
    if not arrays:
        return

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    write_atomically(os.path.join(out, REFERENCE_FEATURES), write)


def write_contact_sheets(out: str, runs: Sequence, ids: Sequence[str], groups: dict, jobs: Sequence[ImageJob],
                         results: Sequence[PartResults], count: int) -> list[str]:
    """One sheet per run against the baseline (``runs[0]``): ``contact_sheet_<run>.html`` and ``.png``; returns the
    HTML paths. Each input shows its lowest seed that both runs have."""
    scores: dict = {}
    for res in results:
        if not res.part.per_input:
            for key, m in per_job(res).items():
                scores.setdefault(key, {}).update(m.scores)
    images = {(j.run, j.input_id, j.seed): j for j in jobs}
    base = runs[0].name
    written = []
    for run in runs[1:]:
        rows = []
        for input_id in ids:
            seeds = sorted(s for (r, i, s) in images if r == base and i == input_id and (run.name, i, s) in images)
            if not seeds:
                continue
            b, m = images[(base, input_id, seeds[0])], images[(run.name, input_id, seeds[0])]
            rows.append(contact_sheet.SheetRow(input_id, groups[input_id][1], b.photo, b.mask, b.image, m.image,
                                               scores.get((base, input_id, seeds[0]), {}),
                                               scores.get((run.name, input_id, seeds[0]), {})))
        picked = contact_sheet.pick_rows(rows, count)
        stem = os.path.join(out, f"contact_sheet_{run.name}")
        contact_sheet.write_html(stem + ".html", f"{base} vs {run.name}", picked, base, run.name)
        contact_sheet.write_png(stem + ".png", picked, base, run.name)
        written.append(stem + ".html")
    return written
