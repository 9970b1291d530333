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
import os
import sys
from dataclasses import dataclass

from ..models.errors import InputError
from ..models.scoring.comparison import stats

log = logging.getLogger("salient_background")

TABLE_FILES = ("table.md", "table.csv", "table.json")
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


def run_table(args) -> int:
    """``evaluate --runs``: everything cheap checked, then the table in this process or shared by the processes."""
    from ..models.runs.ranks import join_ranks

    mixed = [flag for flag in ("masks", "generated", "manifest", "compare") if getattr(args, flag, None)]
    if mixed:
        raise InputError(f"--runs takes generate output folders: give it without --{', --'.join(mixed)}")
    the_plan = plan(args)
    with join_ranks() as ranks:
        return _run(args, the_plan, ranks)


def _run(args, the_plan: Plan, ranks) -> int:
    from ..models.precision import parse_device
    from ..models.runs.ranks import device_name
    from ..models.scoring.comparison import compare
    from ..models.scoring.comparison.cache import MeasurementCache
    from ..models.scoring.comparison.measure import Digests
    from ..models.scoring.comparison.parts import build_parts
    from .common import ensure_output_dir, remove_stale_temporaries

    device = parse_device(device_name(args.device, ranks))
    out = ensure_output_dir(args.output, "--output folder")
    cache = MeasurementCache(os.path.abspath(args.cache or os.path.join(out, CACHE_FOLDER)))
    remove_stale_temporaries(ranks, [out, cache.folder])  # left by a killed writer
    if args.dry_run:
        return _dry_run(ranks, the_plan, cache)
    built = build_parts(the_plan.selected, _part_settings(args), device)
    if not built.parts:
        raise InputError("no metric can run: " + "; ".join(built.missing))
    digest = Digests()
    with _progress(args, ranks, len(the_plan.jobs) * len(built.parts)) as advance:
        results = compare.measure_runs(built.parts, the_plan.jobs, cache, ranks, batch_size=args.metric_batch,
                                       on_done=advance, digest=digest)
    if args.reference and not os.path.isdir(args.reference):
        reference = compare.read_reference(args.reference)
    else:
        reference = compare.reference_features(built.feature_parts, the_plan.reference_jobs, cache, ranks,
                                               batch_size=args.metric_batch, digest=digest)
    # every measurement is in the cache: the other processes are done, the main process makes the table alone
    ranks.close()
    if not ranks.is_main:
        return 0
    compare.write_reference(out, reference)
    settings = {"runs": {r.name: r.folder for r in the_plan.runs}, "metrics": [p.name for p in built.parts],
                "identities": {p.name: p.identity for p in built.parts}, "missing": built.missing,
                "reference": os.path.abspath(args.reference) if args.reference else "the runs' framed input photos"}
    result = compare.make_table(the_plan.runs, the_plan.ids, the_plan.groups, results, built.set_metrics, reference,
                                resamples=args.bootstrap, seed=args.bootstrap_seed, settings=settings)
    compare.write_table(out, result)
    if args.contact_sheet:
        compare.write_contact_sheets(out, the_plan.runs, the_plan.ids, the_plan.groups, the_plan.jobs, results,
                                     args.contact_sheet)
    return _report(result, built, the_plan, out)


def _part_settings(args):
    from ..models.scoring.comparison.parts import PartSettings, Readers
    from .evaluate_inputs import resolve_sam

    return PartSettings(Readers(_read_image, _read_mask), sam_path=resolve_sam(args.sam) if args.sam else None,
                        points=args.points, seed=args.seed, mask_choice=args.mask_choice, models_dir=args.models_dir)


def _read_image(path: str):
    from .evaluate_inputs import _read_item, load_image

    return _read_item(load_image, path, "image")


def _read_mask(path: str):
    from .evaluate_inputs import _read_item, load_mask

    return _read_item(load_mask, path, "mask")


def _report(result: dict, built, the_plan: Plan, out: str) -> int:
    from ..models.scoring.comparison.table import render_markdown
    from .common import exit_status

    print(render_markdown(result))
    for missing in built.missing:
        print(f"left out: {missing}", file=sys.stderr)
    failed = result.get("failed", [])
    if failed:
        print(f"{len(failed)} measurement(s) failed; listed under 'failed' in {os.path.join(out, 'table.json')}",
              file=sys.stderr)
    print(f"evaluate: table of {len(the_plan.runs)} runs over {len(the_plan.ids)} inputs in {out}")
    return exit_status("evaluate", len(failed))


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
