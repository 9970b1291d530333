"""``python -m salient_background evaluate``: the object-expansion score over a folder or manifest of generations.

Inputs (one of):

* ``--masks DIR --generated DIR`` (``--originals DIR`` optional): every generated image is paired with the mask
  whose name it starts with: ``cat.png`` or ``cat_mask.png`` (what the ``mask`` command writes) in the masks
  folder goes with ``cat.png``, ``cat_0.png``, ``cat_seed42.png``, ``cat-3.jpg`` in the generated folder (the
  longest matching mask name wins, so ``cat_black.png`` goes with ``cat_black`` if that mask exists).
* ``--manifest FILE.csv`` with a header holding ``mask`` and ``generated`` (several generated files separated by
  ``;``) and optionally ``original`` and ``id``; relative paths are relative to the manifest's folder.

Outputs in ``--output DIR``: ``expansion.csv`` (one row per generated image), ``summary.json`` (mean, median,
percentiles and the share of images above ``--threshold`` of every score; under ``failed``, the images or masks
that could not be read, with the reason, and the exit code is then 1) and ``settings.json``. Re-running the same
command resumes: images already in the CSV are skipped (the settings must match, or use ``--overwrite``), and so
are the failed ones unless ``--retry-failed``. Under ``torchrun`` / ``accelerate launch`` the images are shared
between the processes (those of one mask stay together); the main process writes the CSV and summary at the end.
``--compare RUN_A RUN_B`` prints the ratio of mean expansion of two finished runs (A / B).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time

from ..models.errors import InputError, UserFacingError
from ..models.runs import resumable
from ..models.runs.resumable import FolderState, RecordKind
from .common import add_run_options, check_run_options
from .evaluate_inputs import (_read_item, collect_rows, load_image, load_mask, pair_folders,  # noqa: F401 (also
                              read_manifest, resolve_sam)  # imported from here by evaluate_table and the tests)

log = logging.getLogger("salient_background")

CSV_NAME, SUMMARY_NAME, SETTINGS_NAME = "expansion.csv", "summary.json", "settings.json"
SCORE_FIELDS = ["width", "height", "object_px", "sam_px", "expansion_px", "expansion_image_fraction",
                "expansion_relative", "lost_px", "iou", "sam_score"]
TIMINGS_NAME = "timings.jsonl"  # seconds per scored image, apart: the result files stay the same for 1 or N processes
NEW_FAILURES = "_new_failures"  # in the dict evaluate() returns (not written): failures of this run, for the exit status
SUMMARISED = ["expansion_relative", "expansion_image_fraction", "expansion_px", "iou", "salient_signed"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="object-expansion score (SAM) of generated images against object masks; compare two runs",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("inputs")
    src.add_argument("--masks", help="folder of object masks (white = object; an RGBA cut-out uses its alpha)")
    src.add_argument("--generated", help="folder of generated images")
    src.add_argument("--originals", help="folder of original photos (optional, recorded in the CSV)")
    src.add_argument("--manifest", help="CSV with columns mask, generated[, original, id] instead of folders")
    parser.add_argument("--sam", help="SAM checkpoint: a file, a file name in ComfyUI's sams folder "
                        "(sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth) or its download name "
                        "(sam-vit-b, sam-vit-l, sam-vit-h)")
    parser.add_argument("--output", help="folder for expansion.csv, summary.json, settings.json")
    parser.add_argument("--points", type=int, default=8, help="positive points per mask (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point sampling (default 0)")
    parser.add_argument("--mask-choice", choices=["auto", "best_score", "largest", "single"], default="auto",
                        help="which SAM output to keep (default auto; see README)")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="summary reports the share of images with expansion_relative above this (default 0.05)")
    parser.add_argument("--salient-checkpoint", help="also compute the reference notebook's signed salient area "
                        "change with this InSPyReNet checkpoint (the masks must be salient masks of the originals)")
    parser.add_argument("--salient-mode", choices=["base", "fast"], default="base")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="start the output folder afresh instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_options(parser, batch=False)
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="print the ratio of mean expansion of two finished runs (output folders or their "
                             "summary.json); alone, or after an evaluation")
    from .evaluate_table import add_arguments as add_table_arguments

    add_table_arguments(parser)  # --runs, --metrics...: the comparison table (commands/evaluate_table.py)
    parser.set_defaults(func=run)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def read_results(csv_path: str) -> list[dict]:
    """Complete rows of a results CSV (a row cut short by an interruption is dropped)."""
    if not os.path.isfile(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as fh:  # as written by _merge
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        return [row for row in reader if all(row.get(f) not in (None, "") for f in fields if f != "original")]


def summarise(rows: list[dict], threshold: float, settings: dict) -> dict:
    from ..models.scoring.expansion import describe_distribution

    summary = {"images": len(rows), "threshold_on": "expansion_relative", "settings": settings}
    for field in SUMMARISED:
        if rows and field in rows[0]:
            values = [float(r[field]) for r in rows]
            summary[field] = describe_distribution(values, threshold if field == "expansion_relative" else None)
    return summary


def _load_summary(run: str) -> dict:
    path = os.path.join(run, SUMMARY_NAME) if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise InputError(f"no {SUMMARY_NAME} at {path!r}: run the evaluation first (it writes one into --output)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def compare_runs(run_a: str, run_b: str, out=None) -> dict:
    """Print and return the ratios of mean expansion A / B (relative, image fraction, pixels)."""
    out = out or sys.stdout
    a, b = _load_summary(run_a), _load_summary(run_b)
    ratios = {}
    print(f"A = {run_a} ({a.get('images')} images), B = {run_b} ({b.get('images')} images)", file=out)
    for field, label in (("expansion_relative", "relative to the object"), ("expansion_image_fraction", "fraction of the image"),
                         ("expansion_px", "pixels")):
        ma, mb = (a.get(field) or {}).get("mean"), (b.get(field) or {}).get("mean")
        if ma is None or mb is None:
            continue
        ratio = ma / mb if mb else math.inf if ma else math.nan
        ratios[field] = ratio
        print(f"mean expansion ({label}): A {ma:.6g}, B {mb:.6g} -> A/B = {ratio:.2f}x", file=out)
    sa, sb = a.get("settings", {}), b.get("settings", {})
    differing = sorted(k for k in ("sam_variant", "points", "seed", "mask_choice") if sa.get(k) != sb.get(k))
    if differing:
        print(f"warning: the runs used different settings ({', '.join(differing)}); the ratio mixes protocols", file=out)
    return ratios


# ---------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    if args.runs:  # the comparison table over generate runs
        from .evaluate_table import run_table

        return run_table(args)
    evaluating = bool(args.masks or args.generated or args.manifest)
    if not evaluating:
        if not args.compare:
            raise InputError("give --masks and --generated, or --manifest (or --compare RUN_A RUN_B)")
        compare_runs(*args.compare)
        return 0
    _check_options(args)
    summary = evaluate(args)
    if args.compare:
        compare_runs(*args.compare)
    from .common import exit_status

    return exit_status("evaluate", summary.get(NEW_FAILURES, 0))


def _check_options(args: argparse.Namespace) -> None:
    if args.manifest and (args.masks or args.generated):
        raise InputError("give either --manifest or --masks/--generated, not both")
    if not args.manifest and not (args.masks and args.generated):
        raise InputError("folder mode needs both --masks and --generated")
    if not args.sam or not args.output:
        raise InputError("--sam (a SAM checkpoint) and --output (a folder) are required for an evaluation")
    check_run_options(args)
    if args.points < 1:
        raise InputError("--points must be at least 1")
    if args.salient_checkpoint and not os.path.isfile(args.salient_checkpoint):
        raise InputError(f"--salient-checkpoint {args.salient_checkpoint!r} is not a file")


def evaluate(args: argparse.Namespace) -> dict:
    """Score every generated image not yet in the output CSV (in this process, or shared by the processes of a
    ``torchrun`` / ``accelerate launch`` run); write the CSV and the summary. Its ``failed`` list holds the images
    that could not be scored (unreadable files), each with the reason; a re-run skips them unless --retry-failed."""
    from ..models.runs.ranks import join_ranks

    with join_ranks() as ranks:
        return _evaluate(args, ranks)


def _evaluate(args: argparse.Namespace, ranks) -> dict:
    from ..models.networks.sam import load_sam
    from ..models.precision import parse_device
    from ..models.runs.journal import Journal
    from ..models.runs.ranks import device_name
    from .common import ensure_output_dir, remove_stale_temporaries, run_shared_part

    # everything cheap first: the SAM file, the inputs, the device and the output folder, before any model loads
    sam_path = resolve_sam(args.sam)
    rows = collect_rows(args)
    device = parse_device(device_name(args.device, ranks))
    ensure_output_dir(args.output, "--output folder")
    remove_stale_temporaries(ranks, [args.output])
    journal = Journal(args.output, "evaluate")
    if args.dry_run:  # what the folder holds; no model loaded, so the settings are not compared
        state = read_output_state(args.output, journal)
        return _dry_run(ranks, rows, *_plan(rows, state, args), state)
    loaded = load_sam(sam_path)
    settings = _settings(args, sam_path, loaded.variant)
    state = _open_output(args, settings, journal, ranks)
    todo, skipped = _plan(rows, state, args)
    fields = _csv_fields(args)
    run_shared_part(ranks, journal, todo, key=lambda r: os.path.basename(r["mask"]), record_key=_record_key,
                    describe=lambda r: r["generated"], total=len(todo), already=len(rows) - len(todo),
                    unit="image", desc="evaluate", args=args,
                    make_runner=lambda mine, progress: _runner(args, loaded, device, progress))
    if not ranks.is_main:
        return {}
    return _merge(args, settings, state, journal, fields, len(rows) - len(todo) - len(skipped), skipped,
                  {_record_key(row) for row in todo})


def _record_key(row: dict) -> str:
    import hashlib

    return hashlib.sha1(row["generated"].encode("utf-8", "surrogatepass")).hexdigest()[:20]  # a non-UTF-8 name too


def _failure(record: dict) -> dict:
    return {"generated": record["generated"], "mask": record["mask"], "reason": record["failed"]}


# an evaluate record is one scored image (a row of the CSV, by generated image), or its failure
SCORE_RECORDS = RecordKind(item_id=lambda r: r["generated"], failure=_failure,
                           add_rows=lambda rows, r: rows.__setitem__(r["generated"], r))


def _plan(rows: list[dict], state: FolderState, args) -> tuple[list[dict], list[dict]]:
    """(rows to score, rows skipped as failed before); the rows of one mask adjacent (its prompts are reused)."""
    left = [r for r in rows if r["generated"] not in state.rows]
    skipped = [r for r in left if r["generated"] in state.failed and not args.retry_failed]
    todo = sorted((r for r in left if args.retry_failed or r["generated"] not in state.failed), key=lambda r: r["mask"])
    if len(rows) - len(left):
        log.info("resuming: %d of %d images already scored in %s", len(rows) - len(left), len(rows), args.output)
    return todo, skipped


def _dry_run(ranks, rows, todo, skipped, state) -> dict:
    from .common import print_dry_run

    if ranks.is_main:
        planned, skipping = {r["generated"] for r in todo}, {r["generated"] for r in skipped}

        def status(g: str) -> str:
            reason = state.failed[g]["reason"] if g in skipping and g not in planned else None
            return resumable.status(to_do=g in planned, failed_reason=reason)

        print_dry_run([(row["id"], row["generated"], status(row["generated"]))
                       for row in sorted(rows, key=lambda r: r["generated"])],
                      resumable.summary(len(rows), "image", len(todo), len(rows) - len(todo) - len(skipped), len(skipped)))
    return {}


def _settings(args: argparse.Namespace, sam_path: str, sam_variant: str) -> dict:
    return {
        "sam_file": os.path.basename(sam_path), "sam_bytes": os.path.getsize(sam_path), "sam_variant": sam_variant,
        "points": args.points, "seed": args.seed, "mask_choice": args.mask_choice,
        "negative_points": False, "box": False, "binarise": ">= 0.5",
        "salient_checkpoint": os.path.basename(args.salient_checkpoint) if args.salient_checkpoint else None,
        "salient_mode": args.salient_mode if args.salient_checkpoint else None,
    }


def _open_output(args: argparse.Namespace, settings: dict, journal, ranks) -> FolderState:
    """Start afresh (--overwrite: the main process clears the folder) or resume: refuse a folder holding a run with
    other settings; record ours. Returns what is already scored or failed."""
    from ..models.runs.atomic import write_json_atomically

    if args.overwrite:
        if ranks.is_main:
            for name in (CSV_NAME, SUMMARY_NAME, SETTINGS_NAME):
                if os.path.exists(os.path.join(args.output, name)):
                    os.remove(os.path.join(args.output, name))
            journal.clear()
            write_json_atomically(os.path.join(args.output, SETTINGS_NAME), settings)
        return FolderState({}, {})
    settings_path = os.path.join(args.output, SETTINGS_NAME)
    if os.path.isfile(settings_path):
        with open(settings_path, encoding="utf-8") as fh:
            previous = json.load(fh)
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise UserFacingError(
                f"{args.output!r} holds a run with other settings ({', '.join(changed)}): resume with the same "
                "options, choose another --output, or pass --overwrite to start again")
    elif ranks.is_main:
        write_json_atomically(settings_path, settings)
    return read_output_state(args.output, journal)


def read_output_state(output: str, journal) -> FolderState:
    """The complete rows of the CSV (a row cut short by an interruption is dropped), by generated image, the failures
    the summary lists, and the records a stopped run did not merge."""
    done = {r["generated"]: r for r in read_results(os.path.join(output, CSV_NAME))}
    failed = {}
    summary_path = os.path.join(output, SUMMARY_NAME)
    if os.path.isfile(summary_path):
        try:
            with open(summary_path, encoding="utf-8") as fh:
                listed = json.load(fh).get("failed", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            listed = []
        failed = {f["generated"]: f for f in listed if isinstance(f, dict) and "generated" in f}
    state = resumable.read_state(SCORE_RECORDS, journal, done, failed)
    for generated in state.rows:
        state.failed.pop(generated, None)
    return state


def _csv_fields(args: argparse.Namespace) -> list[str]:
    fields = ["id", "generated", "mask", "original"] + SCORE_FIELDS
    if args.salient_checkpoint:
        fields.append("salient_signed")
    return fields


class ScoreRunner:
    """The steps :func:`models.runs.engine.run_items` calls per generated image: read it and its mask, score it."""

    def __init__(self, model, salient, args, progress):
        self.model, self.salient, self.args, self.progress = model, salient, args, progress
        self._mask_path, self._prompt_cache = None, {}

    @staticmethod
    def load(row: dict):
        return _read_item(load_mask, row["mask"], "mask"), _read_item(load_image, row["generated"], "generated image")

    def compute(self, ready: list) -> list:
        from ..models.scoring.expansion import score_expansion, signed_salient_change

        from ..models.runs.engine import ItemFailed

        results = []
        for row, (mask, image) in ready:
            start = time.perf_counter()
            if row["mask"] != self._mask_path:  # rows of one mask are adjacent: keep its prompts meanwhile
                self._mask_path, self._prompt_cache = row["mask"], {}
            try:
                result = score_expansion(self.model, image, mask, points=self.args.points, seed=self.args.seed,
                                         mask_choice=self.args.mask_choice, prompt_cache=self._prompt_cache)
            except UserFacingError as exc:  # e.g. a mask of another aspect ratio: this row fails, the run goes on
                results.append(ItemFailed(str(exc)))
                continue
            record = dict(row, **result.scores[0].as_dict())
            if self.salient is not None:
                maps = self.salient.predict(image, resize="dynamic").maps.float().cpu()
                record["salient_signed"] = signed_salient_change(mask, maps)[0]
            record["seconds"] = round(time.perf_counter() - start, 3)
            results.append({k: _fmt(v) for k, v in record.items()})
        return results

    def save(self, row: dict, record: dict) -> dict:
        self.progress.advance(1)
        return record

    def failure_record(self, row: dict, reason: str) -> dict:
        self.progress.advance(1)
        return {"generated": row["generated"], "mask": row["mask"], "failed": reason}


def _runner(args, loaded_sam, device, progress) -> ScoreRunner:
    import torch

    salient = None
    if args.salient_checkpoint:
        from ..models.networks.salient import load_salient_model

        salient = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device, dtype=torch.float32)
    return ScoreRunner(loaded_sam.model.to(device), salient, args, progress)


def _merge(args, settings: dict, state: FolderState, journal, fields: list[str], already: int, skipped: list,
           this_run: set) -> dict:
    """The main process, once every process is done: the CSV (sorted by generated image) and the summary, written
    atomically from what was scored before and the new records; then the records go."""
    from ..models.runs.atomic import write_bytes_if_changed, write_json_if_changed
    from .common import report_failures

    summary: dict = {}

    def write(done, failed_by_image, records):
        # what this run did (``this_run``: record keys), not the records a stopped run left unmerged
        _append_timings(os.path.join(args.output, TIMINGS_NAME), records)
        rows = [done[g] for g in sorted(done)]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_if_changed(os.path.join(args.output, CSV_NAME), table.getvalue().encode("utf-8", "surrogateescape"))
        summary.update(summarise(rows, args.threshold, settings))
        failed = [failed_by_image[g] for g in sorted(failed_by_image)]
        if failed:
            summary["failed"] = failed
        write_json_if_changed(os.path.join(args.output, SUMMARY_NAME), summary)

    records = resumable.merge(SCORE_RECORDS, journal, state.rows, state.failed, write).records
    new_failures = len(resumable.new_failures(records, this_run))
    scored_now = sum("failed" not in r for key, r in records.items() if key in this_run)
    failed = summary.get("failed", [])
    _print_summary(summary, args)
    print(f"evaluate: {scored_now} scored, {already} already scored, {len(failed)} failed")
    report_failures("evaluate", {f["generated"]: dict(f, source=f["generated"]) for f in failed},
                    [r["generated"] for r in skipped])
    return dict(summary, **{NEW_FAILURES: new_failures})


def _append_timings(path: str, records: dict) -> None:
    """One JSON line per image scored now: how long its scoring took (a log beside the results, not one of them)."""
    lines = [json.dumps({"generated": r["generated"], "seconds": float(r["seconds"])})
             for _, r in sorted(records.items()) if "seconds" in r]
    if lines:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


def _print_summary(summary: dict, args) -> None:
    rel = summary.get("expansion_relative", {})
    if rel.get("mean") is not None:
        print(f"{summary['images']} images: mean expansion {100 * rel['mean']:.2f} % of the object "
              f"(median {100 * rel['median']:.2f} %), {100 * rel['share_above_threshold']:.1f} % of images above "
              f"{100 * args.threshold:g} %; {rel['undefined']} undefined. Results in {args.output}")
    else:
        print(f"{summary['images']} images, no defined score. Results in {args.output}")
    if summary.get("failed"):
        print(f"{len(summary['failed'])} image(s) could not be scored (listed with the reason under 'failed' in "
              f"{os.path.join(args.output, SUMMARY_NAME)})", file=sys.stderr)
