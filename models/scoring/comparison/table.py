"""The comparison table: per block (dataset, category), one row per run, one column per metric, and the paired
statistics of every run against the baseline; written as ``table.md``, ``table.csv`` and ``table.json``.

Numbers are rounded to 6 significant digits in every file (3 decimals in the Markdown), so the files do not depend
on the last bits of a float sum (a run over one process and over two gives the same bytes).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import stats

EXPANSION = "expansion_relative"
FID, KID = "fid", "kid"


@dataclass(frozen=True)
class MetricInfo:
    label: str
    better: str  # "lower" or "higher"
    scale: float = 1.0  # shown multiplied by this


# known metrics in the table's order; others follow alphabetically with their own name
METRICS = {
    EXPANSION: MetricInfo("Expansion (% of object)", "lower", 100.0),
    FID: MetricInfo("FID", "lower"),
    KID: MetricInfo("KID (x1000)", "lower", 1000.0),
    "clip_score": MetricInfo("CLIP score", "higher"),
    "lpips_diversity_background": MetricInfo("LPIPS diversity (background)", "higher"),
    "lpips_diversity": MetricInfo("LPIPS diversity (whole)", "higher"),
    "object_similarity": MetricInfo("Object similarity", "higher"),
    "object_similarity_unpasted": MetricInfo("Object similarity (un-pasted)", "higher"),
}


def info(name: str) -> MetricInfo:
    return METRICS.get(name, MetricInfo(name, "higher"))


def ordered(names) -> list[str]:
    names = set(names)
    return [n for n in METRICS if n in names] + sorted(names - set(METRICS))


@dataclass
class GaussianStatistics:
    """A reference set given as FID statistics only (mean and covariance of its features): FID, not KID."""

    mu: np.ndarray
    sigma: np.ndarray


def mean_and_covariance(reference) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(reference, GaussianStatistics):
        return reference.mu, reference.sigma
    return reference.mean(0), np.cov(reference, rowvar=False)


@dataclass
class SetMetric:
    """A metric of a whole set of images, from one kind of feature and the reference set's features.
    ``value(features, reference)`` is the point estimate; ``redraw(features, image_input, n_inputs, reference)``
    returns ``stat(idx)`` for :func:`stats.set_level_difference`."""

    name: str
    feature: str
    value: Callable[[np.ndarray, object], float]
    redraw: Callable
    needs_features: bool = False  # True: cannot be computed from GaussianStatistics


def fid_metric(feature: str = "inception", value: Optional[Callable] = None) -> SetMetric:
    """FID; ``value(x, reference)`` gives the point estimate (default: :func:`stats.weighted_fid`), the interval
    is redrawn with :func:`stats.fid_bootstrap`."""
    def point(x, ref):
        return stats.weighted_fid(x, np.ones(len(x)), *mean_and_covariance(ref))

    return SetMetric(FID, feature, value or point,
                     lambda x, ii, n, ref: stats.fid_bootstrap(x, ii, n, *mean_and_covariance(ref)))


def kid_metric(feature: str = "inception", value: Optional[Callable] = None) -> SetMetric:
    """KID; default point estimate: the full-set unbiased MMD² (what the interval redraws)."""
    return SetMetric(KID, feature, value or stats.unbiased_mmd2, stats.kid_bootstrap, needs_features=True)


@dataclass
class RunMeasurements:
    """One run's measurements: per input, its metric values (the mean over its images, and per-input metrics such as
    LPIPS diversity) and its images' feature vectors by feature name."""

    name: str
    per_input: dict = field(default_factory=dict)  # input id -> {metric: value}
    features: dict = field(default_factory=dict)  # feature name -> {input id: [vector per image]}
    images: dict = field(default_factory=dict)  # input id -> number of images


def _round(x) -> Optional[float]:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{float(x):.6g}")


def _values(run: RunMeasurements, ids: Sequence[str], metric: str) -> np.ndarray:
    return np.array([run.per_input.get(i, {}).get(metric, math.nan) for i in ids], dtype=np.float64)


def _stacked(run: RunMeasurements, feature: str, ids: Sequence[str]):
    per = run.features.get(feature, {})
    vectors, owner = [], []
    for k, i in enumerate(ids):
        for v in per.get(i, []):
            vectors.append(np.asarray(v, np.float64))
            owner.append(k)
    return (np.stack(vectors) if vectors else np.zeros((0, 0))), np.array(owner, dtype=np.int64)


def _usable(metric: SetMetric, reference) -> bool:
    return reference is not None and not (metric.needs_features and isinstance(reference, GaussianStatistics))


def _set_value(metric: SetMetric, x: np.ndarray, reference) -> float:
    if not _usable(metric, reference) or len(x) < 2:
        return math.nan
    return float(metric.value(x, reference))


def build_block(runs: Sequence[RunMeasurements], ids: Sequence[str], metrics: Sequence[str],
                set_metrics: Sequence[SetMetric], reference: dict, *, resamples: int, seed: int) -> dict:
    """One block: each run's row and each non-baseline run's paired statistics against ``runs[0]``."""
    base = runs[0]
    rows, comparisons = [], []
    set_values = {}
    for run in runs:
        values = {m: _round(np.nanmean(v)) if np.isfinite(v := _values(run, ids, m)).any() else None for m in metrics}
        for sm in set_metrics:
            x, _ = _stacked(run, sm.feature, ids)
            set_values[run.name, sm.name] = _set_value(sm, x, reference.get(sm.feature))
            values[sm.name] = _round(set_values[run.name, sm.name])
        rows.append({"run": run.name, "images": int(sum(run.images.get(i, 0) for i in ids)), "values": values})
    for run in runs[1:]:
        kw = dict(resamples=resamples, seed=seed)
        entry = {"run": run.name, "differences": {}}
        if EXPANSION in metrics:
            entry["expansion_ratio"] = _interval(stats.ratio_of_means(_values(base, ids, EXPANSION),
                                                                      _values(run, ids, EXPANSION), **kw))
        for m in metrics:
            entry["differences"][m] = _interval(stats.mean_difference(_values(base, ids, m), _values(run, ids, m), **kw))
        for sm in set_metrics:
            entry["differences"][sm.name] = _interval(_set_difference(sm, base, run, ids, reference, set_values, kw))
        comparisons.append(entry)
    return {"inputs": len(ids), "rows": rows, "comparisons": comparisons}


def _set_difference(sm: SetMetric, base, run, ids, reference, set_values, kw) -> stats.Interval:
    ref = reference.get(sm.feature)
    (xb, ib), (xm, im) = _stacked(base, sm.feature, ids), _stacked(run, sm.feature, ids)
    vb, vm = set_values[base.name, sm.name], set_values[run.name, sm.name]
    if not _usable(sm, ref) or len(xb) < 2 or len(xm) < 2:
        return stats.Interval(vm - vb, math.nan, math.nan)
    return stats.set_level_difference(sm.redraw(xb, ib, len(ids), ref), sm.redraw(xm, im, len(ids), ref),
                                      len(ids), vb, vm, **kw)


def _interval(iv: stats.Interval) -> dict:
    return {"value": _round(iv.value), "low": _round(iv.low), "high": _round(iv.high), "moved": iv.excludes(0.0)}


def build_table(runs: Sequence[RunMeasurements], block_ids: dict, set_metrics: Sequence[SetMetric] = (),
                reference: Optional[dict] = None, *, resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = stats.DEFAULT_SEED, settings: Optional[dict] = None) -> dict:
    """The whole table (what ``table.json`` holds). ``block_ids``: {(dataset, category): [input ids]}."""
    per_input = ordered({m for r in runs for scores in r.per_input.values() for m in scores})
    blocks = []
    for (dataset, category), ids in block_ids.items():
        block = build_block(runs, ids, per_input, set_metrics, reference or {}, resamples=resamples, seed=seed)
        blocks.append({"dataset": dataset, "category": category, **block})
    names = ordered(per_input + [sm.name for sm in set_metrics])
    return {
        "baseline": runs[0].name, "runs": [r.name for r in runs],
        "metrics": [{"name": n, "label": info(n).label, "better": info(n).better, "scale": info(n).scale} for n in names],
        "statistics": {"resamples": resamples, "seed": seed, "level": stats.LEVEL, "resampled": "inputs (paired)",
                       "interval": "percentile"},
        "settings": settings or {}, "blocks": blocks,
    }


# ---------------------------------------------------------------------------------------------- rendering
def _fmt(x, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if x is None else f"{x * scale:.{digits}f}"


def _fmt_interval(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    text = f"{_fmt(d['value'], scale, digits)} [{_fmt(d['low'], scale, digits)}, {_fmt(d['high'], scale, digits)}]"
    return text + (" *" if d["moved"] else "")


def render_markdown(table: dict) -> str:
    metrics = table["metrics"]
    st = table["statistics"]
    lines = [f"# Comparison: {', '.join(table['runs'])} (baseline: {table['baseline']})", ""]
    for block in table["blocks"]:
        lines += [f"## {block['dataset']} / {block['category']} ({block['inputs']} inputs)", ""]
        head = ["model", "images"] + [f"{m['label']} {'↓' if m['better'] == 'lower' else '↑'}" for m in metrics]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in block["rows"]:
            cells = [row["run"], str(row["images"])] + [_fmt(row["values"].get(m["name"]), m["scale"]) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        if block["comparisons"]:
            lines += ["", f"Against {table['baseline']}: value [95 % interval]; * = the interval excludes no change.", ""]
            head = ["model", "expansion ratio (baseline / model)"] + [f"Δ {m['label']}" for m in metrics]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for comp in block["comparisons"]:
                ratio = comp.get("expansion_ratio")
                cells = [comp["run"], _fmt_interval(ratio, digits=2).replace(" *", "") if ratio else "–"]
                cells += [_fmt_interval(comp["differences"][m["name"]], m["scale"]) if m["name"] in comp["differences"]
                          else "–" for m in metrics]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Intervals: paired bootstrap over inputs, {st['resamples']} resamples, seed {st['seed']}, "
                 f"{st['interval']} {100 * st['level']:g} %.")
    return "\n".join(lines) + "\n"


def render_csv(table: dict) -> str:
    names = [m["name"] for m in table["metrics"]]
    header = ["dataset", "category", "inputs", "run", "images"] + names + [
        "expansion_ratio", "expansion_ratio_low", "expansion_ratio_high"]
    for n in names:
        header += [f"{n}_diff", f"{n}_diff_low", f"{n}_diff_high", f"{n}_moved"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for block in table["blocks"]:
        comps = {c["run"]: c for c in block["comparisons"]}
        for row in block["rows"]:
            comp = comps.get(row["run"], {})
            cells = [block["dataset"], block["category"], block["inputs"], row["run"], row["images"]]
            cells += [_csv(row["values"].get(n)) for n in names]
            ratio = comp.get("expansion_ratio") or {}
            cells += [_csv(ratio.get(k)) for k in ("value", "low", "high")]
            for n in names:
                d = comp.get("differences", {}).get(n)
                cells += [_csv(d[k]) for k in ("value", "low", "high")] + [str(d["moved"]).lower()] if d else ["", "", "", ""]
            writer.writerow(cells)
    return buf.getvalue()


def _csv(x) -> str:
    return "" if x is None else repr(x)


def render_json(table: dict) -> str:
    return json.dumps(table, indent=2) + "\n"
