"""``evaluate --runs``: the comparison table over several ``generate`` runs of the same inputs.

``python -m salient_background evaluate --runs base=OUT_SI2 cn=OUT_CN [more=OUT ...] --output TABLE_DIR`` measures
every image of every run with the selected metrics (``--metrics``; default: every metric whose model is on disk),
groups the inputs by dataset and category, and writes into ``--output``:

* ``table.md`` (rows = runs, columns = metrics, one block per dataset and category; then each run against the
  baseline: the expansion ratio and each metric's paired difference with bootstrap 95 % intervals), ``table.csv``,
  ``table.json`` (everything, with the settings);
* ``contact_sheet_<run>.html`` and ``.png`` per run compared with the baseline: the inputs with the largest expansion
  difference, photo | baseline | run, with their scores;
* ``cache/``: every image's measurements (resume: an interrupted table redoes only what is missing; another reference
  set or another metric reuses everything measured).

The first run is the baseline (``generate --controlnet-scale 0``). Under ``torchrun`` / ``accelerate launch`` the
images are shared between the processes; the main process writes the table.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass

from ..models.errors import InputError, UserFacingError
from ..models.scoring.comparison import stats

log = logging.getLogger("salient_background")

TABLE_FILES = ("table.md", "table.csv", "table.json")
REFERENCE_FEATURES = "reference_features.npz"
CACHE_FOLDER = "cache"


def add_arguments(parser) -> None:
    group = parser.add_argument_group("comparison table (--runs)")
    group.add_argument("--runs", nargs="+", metavar="[NAME=]FOLDER",
                       help="generate output folders of the same inputs, the baseline (--controlnet-scale 0) first: "
                            "writes table.md/.csv/.json and contact sheets into --output")
    group.add_argument("--metrics", default=None,
                       help="comma-separated metrics for the table (default: every metric whose model is on disk): "
                            "expansion, fid, kid, clip_score, lpips_diversity, object_similarity")
    group.add_argument("--reference", help="real photos for FID/KID: a folder, or a reference_features.npz a table "
                                           "wrote (default: the runs' framed input photos)")
    group.add_argument("--categories", help="CSV/JSON with category (and dataset) per input: by image (e.g. the "
                                            "manifest given to generate) or by id")
    group.add_argument("--coco-annotations", help="COCO instances_*.json: category = supercategory of each photo's "
                                                  "largest instance")
    group.add_argument("--bootstrap", type=int, default=stats.DEFAULT_RESAMPLES,
                       help=f"bootstrap resamples of the inputs (default {stats.DEFAULT_RESAMPLES})")
    group.add_argument("--bootstrap-seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (default 0)")
    group.add_argument("--contact-sheet", type=int, default=12, metavar="N",
                       help="inputs on each contact sheet (default 12; 0 = none)")
    group.add_argument("--metric-batch", type=int, default=8, help="images per metric forward pass (default 8)")
    group.add_argument("--models-dir", help="a models folder laid out as ComfyUI's (the metric models in its "
                                            "metrics/ subfolder; default: the ComfyUI around the pack)")
    group.add_argument("--cache", help=f"measurement cache folder (default: --output/{CACHE_FOLDER})")


@dataclass
class Plan:
    runs: list
    ids: list
    groups: dict
    jobs: list
    reference_jobs: list
    selected: list


def check_table_options(args) -> None:
    if not args.output:
        raise InputError("--runs needs --output (the folder for the table)")
    if args.bootstrap < 2:
        raise InputError("--bootstrap must be at least 2")
    if args.contact_sheet < 0 or args.metric_batch < 1:
        raise InputError("--contact-sheet must be 0 or more and --metric-batch at least 1")
    for flag in ("categories", "coco_annotations"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise InputError(f"--{flag.replace('_', '-')} {path!r} is not a file")
    if args.reference and not os.path.exists(args.reference):
        raise InputError(f"--reference {args.reference!r} does not exist")


def plan(args) -> Plan:
    """Everything cheap, before any model loads: the runs, their shared inputs, the groups and the jobs."""
    from ..models.scoring.comparison import grouping, parts as metric_parts, runs as run_io

    check_table_options(args)
    runs = run_io.read_runs(args.runs)
    ids = run_io.shared_inputs(runs)
    groups = grouping.assign_groups(run_io.input_rows(runs, ids), args.categories, args.coco_annotations)
    jobs = run_io.image_jobs(runs, ids)
    missing = [j.image for j in jobs if not os.path.isfile(j.image)] + sorted(
        {p for j in jobs for p in (j.mask, j.photo) if p and not os.path.isfile(p)})
    if missing:
        raise InputError(f"{len(missing)} file(s) listed by the runs' manifests are missing, e.g. {missing[0]!r}")
    selected = metric_parts.parse_metrics(args.metrics)
    return Plan(runs, ids, groups, jobs, _reference_jobs(args, runs, ids), selected)


def _reference_jobs(args, runs, ids) -> list:
    from ..models.scoring.comparison.measure import ImageJob
    from .files import list_images

    if args.reference and os.path.isdir(args.reference):
        photos = list_images(args.reference)
        if not photos:
            raise InputError(f"--reference {args.reference!r} holds no image")
    elif args.reference:
        return []  # features from the .npz
    else:
        base = runs[0]
        photos = sorted({os.path.join(base.folder, base.rows[i]["original"]) for i in ids})
    return [ImageJob("reference", os.path.basename(p), 0, os.path.abspath(p)) for p in photos]


def run(args) -> int:
    from ..models.runs.ranks import join_ranks

    the_plan = plan(args)
    with join_ranks() as ranks:
        return _run(args, the_plan, ranks)


def _run(args, the_plan: Plan, ranks) -> int:
    from ..models.precision import parse_device
    from ..models.runs.ranks import device_name
    from ..models.scoring.comparison.cache import MeasurementCache
    from ..models.scoring.comparison.measure import Digests, measure_part
    from .common import ensure_output_dir

    device = parse_device(device_name(args.device, ranks))
    out = ensure_output_dir(args.output, "--output folder")
    cache = MeasurementCache(os.path.abspath(args.cache or os.path.join(out, CACHE_FOLDER)))
    if args.dry_run:
        return _dry_run(ranks, the_plan, cache)
    built = build_parts(args, the_plan.selected, device)
    if not built.parts:
        raise InputError("no metric can run: " + "; ".join(built.missing) if built.missing else "no metric selected")
    digest = Digests()
    results, reference = [], {}
    with _progress(args, ranks, len(the_plan.jobs) * len(built.parts)) as advance:
        for part in built.parts:
            results.append(measure_part(part, the_plan.jobs, cache, ranks, digest=digest,
                                        batch_size=args.metric_batch, on_done=advance))
        for part in built.feature_parts:
            reference.update(_reference_features(args, part, the_plan, cache, ranks, digest, out))
    if not ranks.is_main:
        return 0
    return _write_outputs(args, the_plan, built, results, reference, out)


@dataclass
class BuiltParts:
    parts: list  # measured per image / per input
    feature_parts: list  # those whose features make set-level metrics (also measure the reference set)
    set_metrics: list  # table.SetMetric
    missing: list  # "metric: why" for each metric left out


def build_parts(args, selected: list, device) -> BuiltParts:
    """The parts for the ``selected`` metrics ([] = every one whose model is found). A missing model leaves its
    metric out with the download command when all are wanted, and is an error when the metric was asked for."""
    from ..models.scoring.comparison import parts as mp
    from ..models.scoring.comparison.table import fid_metric, kid_metric
    from ..models.scoring.metrics import fid_from_features, kid_from_features

    wanted = selected or list(mp.METRIC_PARTS)
    readers = mp.Readers(_read_image, _read_mask)
    built = BuiltParts([], [], [], [])
    loaders = {"expansion": lambda: _expansion_part(args, readers, device), "inception": lambda: _metric_part(
        "fid", args, readers, device), "clip": lambda: _metric_part("clip", args, readers, device),
        "object_similarity": lambda: _metric_part("object_similarity", args, readers, device),
        "lpips": lambda: _metric_part("lpips", args, readers, device)}
    for part_name in dict.fromkeys(mp.METRIC_PARTS[m] for m in wanted):
        try:
            part = loaders[part_name]()
        except UserFacingError as exc:
            names = [m for m in wanted if mp.METRIC_PARTS[m] == part_name]
            if selected:
                raise
            built.missing.append(f"{', '.join(names)}: {exc}")
            continue
        built.parts.append(part)
        if part_name == "inception":
            built.feature_parts.append(part)
            if "fid" in wanted:
                built.set_metrics.append(fid_metric("inception", value=lambda x, ref: fid_from_features(x, ref)))
            if "kid" in wanted:
                built.set_metrics.append(kid_metric("inception", value=lambda x, ref: kid_from_features(x, ref)[0]))
    return built


def _read_image(path: str):
    from .evaluate import _read_item, load_image

    return _read_item(load_image, path, "image")


def _read_mask(path: str):
    from .evaluate import _read_item, load_mask

    return _read_item(load_mask, path, "mask")


def _expansion_part(args, readers, device):
    from ..models.networks.sam import load_sam
    from ..models.scoring.comparison.parts import ExpansionPart
    from .evaluate import resolve_sam

    if not args.sam:
        raise InputError("the expansion score needs SAM: give --sam (e.g. sam-vit-b after 'download sam-vit-b')")
    path = resolve_sam(args.sam)
    loaded = load_sam(path)
    return ExpansionPart(loaded.model.to(device), readers, points=args.points, seed=args.seed,
                         mask_choice=args.mask_choice, sam_identity={"file": os.path.basename(path),
                                                                     "bytes": os.path.getsize(path),
                                                                     "variant": loaded.variant})


def _metric_part(metric: str, args, readers, device):
    from ..models.model_files.model_paths import discover
    from ..models.scoring import metrics
    from ..models.scoring.comparison import parts as mp

    path = metrics.find_metric_model(metric, discover(args.models_dir))
    if metric == "fid":
        return mp.InceptionPart(metrics.load_inception(path, device), readers)
    if metric == "clip":
        return mp.ClipPart(metrics.load_clip(path, device), readers)
    if metric == "object_similarity":
        return mp.ObjectSimilarityPart(metrics.load_object_encoder(path, device), readers)
    return mp.LpipsPart(metrics.load_lpips(path, device), readers, backbone=path)


def _reference_features(args, part, the_plan, cache, ranks, digest, out) -> dict:
    """{feature name: [N, d]} of the reference set: measured (and cached) from its photos, or read from a .npz."""
    import numpy as np

    from ..models.runs.atomic import write_atomically
    from ..models.scoring.comparison.measure import measure_part

    if args.reference and not os.path.isdir(args.reference):
        try:
            with np.load(args.reference, allow_pickle=False) as data:
                return {name: data[name].astype(np.float64) for name in data.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"--reference {args.reference!r} is neither a folder nor a features .npz: {exc}") from None
    res = measure_part(part, the_plan.reference_jobs, cache, ranks, digest=digest, batch_size=args.metric_batch)
    features: dict = {}
    for key in sorted(res.results, key=lambda k: res.units[k][0].image):
        for name, vector in res.results[key].features.items():
            features.setdefault(name, []).append(vector)
    stacked = {name: np.stack(v).astype(np.float64) for name, v in features.items()}
    if ranks.is_main and stacked:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **stacked)

        write_atomically(os.path.join(out, REFERENCE_FEATURES), write)
    return stacked


def _write_outputs(args, the_plan: Plan, built, results, reference, out) -> int:
    from ..models.runs.atomic import write_atomically, write_json_atomically
    from ..models.scoring.comparison import grouping, runs as run_io, table
    from ..models.scoring.comparison.measure import failed_images

    measured = run_io.assemble(the_plan.runs, the_plan.ids, results)
    settings = {"runs": {r.name: r.folder for r in the_plan.runs}, "metrics": [p.name for p in built.parts],
                "identities": {p.name: p.identity for p in built.parts}, "missing": built.missing,
                "reference": os.path.abspath(args.reference) if args.reference else "the runs' framed input photos"}
    result = table.build_table(measured, grouping.blocks(the_plan.groups), built.set_metrics, reference,
                               resamples=args.bootstrap, seed=args.bootstrap_seed, settings=settings)
    failed = failed_images(results)
    if failed:
        result["failed"] = failed
    for name, text in (("table.md", table.render_markdown(result)), ("table.csv", table.render_csv(result))):
        write_atomically(os.path.join(out, name), _text_writer(text))
    write_json_atomically(os.path.join(out, "table.json"), result)
    if args.contact_sheet:
        _contact_sheets(args, the_plan, results, out)
    print(table.render_markdown(result))
    if built.missing:
        print("left out: " + "; ".join(built.missing), file=sys.stderr)
    if failed:
        print(f"{len(failed)} measurement(s) failed; listed under 'failed' in {os.path.join(out, 'table.json')}",
              file=sys.stderr)
    print(f"evaluate: table of {len(the_plan.runs)} runs over {len(the_plan.ids)} inputs in {out}")
    return 1 if failed else 0


def _text_writer(text: str):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return write


def _contact_sheets(args, the_plan: Plan, results, out) -> None:
    from ..models.scoring.comparison import contact_sheet
    from ..models.scoring.comparison.measure import per_job

    scores: dict = {}
    for res in results:
        if not res.part.per_input:
            for key, m in per_job(res).items():
                scores.setdefault(key, {}).update(m.scores)
    images = {(j.run, j.input_id, j.seed): j for j in the_plan.jobs}
    base = the_plan.runs[0].name
    for run in the_plan.runs[1:]:
        rows = []
        for input_id in the_plan.ids:
            seeds = sorted(s for (r, i, s) in images if r == base and i == input_id and (run.name, i, s) in images)
            if not seeds:
                continue
            b, m = images[(base, input_id, seeds[0])], images[(run.name, input_id, seeds[0])]
            rows.append(contact_sheet.SheetRow(input_id, the_plan.groups[input_id][1], b.photo, b.mask, b.image, m.image,
                                               scores.get((base, input_id, seeds[0]), {}),
                                               scores.get((run.name, input_id, seeds[0]), {})))
        picked = contact_sheet.pick_rows(rows, args.contact_sheet)
        stem = os.path.join(out, f"contact_sheet_{run.name}")
        contact_sheet.write_html(stem + ".html", f"{base} vs {run.name}", picked, base, run.name)
        contact_sheet.write_png(stem + ".png", picked, base, run.name)


def _dry_run(ranks, the_plan: Plan, cache) -> int:
    if ranks.is_main:
        print(f"dry run: {len(the_plan.runs)} runs ({', '.join(r.name for r in the_plan.runs)}; baseline "
              f"{the_plan.runs[0].name}), {len(the_plan.ids)} shared inputs, {len(the_plan.jobs)} images, "
              f"{len(the_plan.reference_jobs)} reference photos; metrics: {', '.join(the_plan.selected) or 'all present'}; "
              f"cache {cache.folder}")
    return 0


class _progress:
    """A tqdm bar on the main process (none with --no-progress or on other processes); yields ``advance(n)``."""

    def __init__(self, args, ranks, total: int):
        self.bar = None
        if ranks.is_main and not getattr(args, "no_progress", False):
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="unit", desc="table", leave=False)
            except ImportError:  # pragma: no cover
                self.bar = None

    def __enter__(self):
        return (lambda n: self.bar.update(n)) if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
