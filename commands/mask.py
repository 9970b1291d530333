"""``python -m salient_background mask``: salient-object mask and cut-out of photos, outside ComfyUI."""
from __future__ import annotations

import argparse
import csv
import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..models.errors import InputError
from ..models.runs.item_ids import assign_ids, base_name, colliding_groups
from .common import (add_run_options, check_run_options, ensure_output_dir, exit_status, print_dry_run,
                     remove_stale_temporaries, report_failures, run_shared_part)
from ..models.runs.atomic import write_atomically, write_json_atomically
from ..models.runs import resumable
from ..models.runs.journal import RECORDS_FOLDER, read_own_manifest
from ..models.runs.resumable import RecordKind
from .files import IMAGE_SUFFIXES, FoundImage, find_images, save_image_atomically

log = logging.getLogger("salient_background")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="salient-object mask (object = white) and RGBA cut-out of images",
        description="Find the salient object in each image with InSPyReNet and write <name>_mask.png "
                    "(object = white, soft unless --binary) and <name>_cutout.png (RGBA). With --output-dir, <name> is the "
                    "image's path below the folder given (a/x.png -> a__x); names that two inputs share get a "
                    "suffix (x+<hash>), so no output overwrites another. mask_manifest.csv/.json beside them record each "
                    "mask's settings (a re-run skips finished masks, refuses other settings unless --overwrite) and "
                    "the photos that failed, with the reason (skipped by a re-run unless --retry-failed). Under "
                    "torchrun / accelerate launch the photos are shared between the processes.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="InSPyReNet checkpoint: ckpt_base.pth (or .safetensors)")
    parser.add_argument("--mode", choices=["base", "fast"], default="base",
                        help="base = the paper's setting (ckpt_base.pth); fast = ckpt_fast.pth (default: base)")
    parser.add_argument("--resize", choices=["auto", "dynamic", "static"], default="auto",
                        help="auto = transparent-background 1.2.12 (the paper's pin): dynamic in base mode, 384x384 in "
                             "fast mode; dynamic/static force one policy (static at base size = 1.3.x). Default: auto")
    parser.add_argument("--binary", action="store_true", help="write a binary mask (>= 0.5) instead of the soft map")
    parser.add_argument("--output-dir", help="where to write (default: next to each image)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto = fp16 on CUDA, fp32 otherwise")
    parser.add_argument("--overwrite", action="store_true", help="redo masks already made (even with other settings)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_options(parser)
    parser.set_defaults(func=run)


def output_paths(images: list[FoundImage], output_dir: Optional[str]) -> list[tuple[str, str]]:
    """(mask path, cut-out path) per image: ``<id>_mask.png`` / ``<id>_cutout.png`` with the ids of
    :mod:`models.item_ids` -- in ``output_dir``, or next to each image (ids made among that folder's images)."""
    folders = [output_dir or os.path.dirname(os.path.abspath(im.path)) for im in images]
    ids: dict[tuple[str, str], str] = {}
    for folder in sorted(set(folders)):
        group = [im for im, f in zip(images, folders) if f == folder]
        roots = [im.root if output_dir else None for im in group]
        assigned = assign_ids((im.identity, base_name(im.path, root)) for im, root in zip(group, roots))
        for base, identities in colliding_groups(assigned).items():
            log.warning("%d inputs share the name %r; their outputs get a suffix: %s", len(identities), base,
                        ", ".join(f"{i} -> {assigned[i]}" for i in identities))
        ids.update({(folder, identity): item_id for identity, item_id in assigned.items()})
    return [(os.path.join(f, ids[f, im.identity] + "_mask.png"), os.path.join(f, ids[f, im.identity] + "_cutout.png"))
            for im, f in zip(images, folders)]


def _unique(images: list[FoundImage]) -> list[FoundImage]:
    """The same file given twice (a folder and a file in it) is done once."""
    seen, unique = set(), []
    for im in images:
        if im.identity not in seen:
            seen.add(im.identity)
            unique.append(im)
    return unique


# ---------------------------------------------------------------------------------------------- what is done
MANIFEST_JSON, MANIFEST_CSV = "mask_manifest.json", "mask_manifest.csv"
CSV_FIELDS = ["id", "source", "mask", "cutout", "note"]
NO_OBJECT_NOTE = "no salient object found: the mask is empty"


@dataclass
class MaskWork:
    """One photo: where its mask and cut-out go (``folder``, ``id``)."""

    found: FoundImage
    folder: str
    id: str

    @property
    def source(self) -> str:
        return os.path.abspath(self.found.path)

    @property
    def key(self) -> str:  # which process does it: the id alone, so the share does not depend on the folder's path
        return self.id


def run_settings(args, dtype) -> dict:
    """What changes the pixels of a mask and cut-out."""
    return {"checkpoint": os.path.abspath(args.checkpoint), "mode": args.mode, "resize": args.resize,
            "binary": args.binary, "precision": str(dtype).replace("torch.", "")}


# a mask record is one manifest row; a failed photo's row goes (its files are not described any more)
MASK_RECORDS = RecordKind(item_id=lambda r: r["id"], failure=resumable.failure_of_item,
                          add_rows=lambda rows, r: rows.__setitem__(r["id"], r), failure_drops_row=True)


def read_folder_state(folder: str, journal) -> tuple[dict, dict]:
    """(rows by id, failures by id) of ``folder``'s mask manifest and of records not merged yet."""
    data = read_own_manifest(os.path.join(folder, MANIFEST_JSON))
    rows = {r["id"]: r for r in data.get("rows", []) if isinstance(r, dict) and "id" in r}
    failed = {f["id"]: f for f in data.get("failed", []) if isinstance(f, dict) and "id" in f}
    state = resumable.read_state(MASK_RECORDS, journal, rows, failed)
    return state.rows, state.failed


def write_folder_manifest(folder: str, rows: dict, failed: dict, settings: dict) -> None:
    """``mask_manifest.json`` (rows with their settings, failures with the reason) and ``mask_manifest.csv``, sorted."""
    table = [rows[k] for k in sorted(rows)]

    def write_csv(tmp):
        # surrogateescape: a file name that is not UTF-8 is written back as its own bytes (not a crash at the end)
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)

    write_atomically(os.path.join(folder, MANIFEST_CSV), write_csv)
    meta = {"settings": settings if all(r["settings"] == settings for r in table) else None, "rows": table}
    if failed:
        meta["failed"] = [failed[k] for k in sorted(failed)]
    write_json_atomically(os.path.join(folder, MANIFEST_JSON), meta)


def plan(works: list[MaskWork], states: dict, settings: dict, args) -> tuple[list[MaskWork], list[MaskWork], list[MaskWork]]:
    """(to do, done, skipped as failed before). A mask made with other settings is refused unless --overwrite."""
    todo, done, skipped, differing = [], [], [], {}
    for work in works:
        rows, failed = states[work.folder]
        row = rows.get(work.id)
        files = [os.path.join(work.folder, work.id + end) for end in ("_mask.png", "_cutout.png")]
        present = all(os.path.isfile(f) for f in files)
        if row is not None and present and row.get("source") == work.source and not args.overwrite:
            if row.get("settings") == settings:
                done.append(work)
                continue
            for key in sorted(k for k in set(row["settings"]) | set(settings) if row["settings"].get(k) != settings.get(k)):
                differing.setdefault(key, files[0])
        if work.id in failed and not args.retry_failed and not args.overwrite:
            skipped.append(work)
            continue
        todo.append(work)
    if differing:
        raise InputError(f"masks made with other settings are there ({', '.join(sorted(differing))}; e.g. "
                         f"{differing[min(differing)]!r}): run with the same options, choose another --output-dir, or "
                         "pass --overwrite to redo them")
    return todo, done, skipped


# ---------------------------------------------------------------------------------------------- doing it
class MaskRunner:
    """The steps :func:`models.runs.engine.run_items` calls: read a photo, find its object, write the two files."""

    def __init__(self, model, args, settings: dict, progress):
        self.model, self.args, self.settings, self.progress = model, args, settings, progress

    @staticmethod
    def load(work: MaskWork):
        from ..models.imaging import image_ops
        from ..models.imaging.picture_files import open_picture

        return image_ops.pil_to_image(open_picture(work.found.path))[0]  # an unreadable file: InputError, per item

    def compute(self, ready: list) -> list:
        """Masks of the photos; photos of one size go through the model together."""
        import torch

        by_size: dict = {}
        for index, (_, image) in enumerate(ready):
            by_size.setdefault(tuple(image.shape), []).append(index)
        results: list = [None] * len(ready)
        for indices in by_size.values():
            images = torch.cat([ready[i][1] for i in indices])
            prediction = self.model.predict(images, resize=self.args.resize)
            for k, i in enumerate(indices):
                mask = prediction.maps[k].float().cpu()
                results[i] = (ready[i][1], (mask >= 0.5).float() if self.args.binary else mask, bool(prediction.empty[k]))
        return results

    def save(self, work: MaskWork, result) -> dict:
        from ..models.imaging import image_ops

        image, mask, empty = result
        mask_path, cutout_path = (os.path.join(work.folder, work.id + end) for end in ("_mask.png", "_cutout.png"))
        save_image_atomically(image_ops.mask_to_pil(mask), mask_path)
        save_image_atomically(image_ops.cutout_rgba(image[0], mask), cutout_path)
        self.progress.advance(1)
        note = f" ({NO_OBJECT_NOTE})" if empty else ""
        print(f"{work.found.path} -> {mask_path}, {cutout_path}{note}")
        record = {"id": work.id, "source": work.source, "mask": os.path.basename(mask_path),
                  "cutout": os.path.basename(cutout_path), "settings": self.settings}
        if empty:
            record["note"] = NO_OBJECT_NOTE
        return record

    def failure_record(self, work: MaskWork, reason: str) -> dict:
        self.progress.advance(1)
        return {"id": work.id, "source": work.source, "failed": reason}


def run(args: argparse.Namespace) -> int:
    from ..models.errors import CheckpointError
    from ..models.runs.ranks import join_ranks

    check_run_options(args)
    if not os.path.isfile(args.checkpoint):  # checked before anything, in a dry run too (the loader's own words)
        raise CheckpointError(f"InSPyReNet checkpoint not found: {args.checkpoint!r} is not a file")
    with join_ranks() as ranks:
        return _run(args, ranks)


def _run(args: argparse.Namespace, ranks) -> int:
    from ..models.precision import parse_device, resolve_dtype
    from ..models.runs.journal import Journal
    from ..models.runs.ranks import device_name

    images = _unique(find_images(args.inputs))
    if not images:
        raise InputError(f"no images found in {args.inputs} (looked for {', '.join(IMAGE_SUFFIXES)})")
    device = parse_device(device_name(args.device, ranks))
    dtype = resolve_dtype(args.precision, device)
    output_dir = ensure_output_dir(args.output_dir) if args.output_dir else None
    works = [MaskWork(im, os.path.dirname(mask_path), os.path.basename(mask_path)[: -len("_mask.png")])
             for im, (mask_path, _) in zip(images, output_paths(images, output_dir))]
    settings = run_settings(args, dtype)
    journals = {folder: Journal(folder, "mask") for folder in sorted({w.folder for w in works})}
    if output_dir:
        remove_stale_temporaries(ranks, [output_dir])
    else:  # the photos' own folders: only their top level (our outputs) and our records
        remove_stale_temporaries(ranks, list(journals), recursive=False)
        remove_stale_temporaries(ranks, [os.path.join(folder, RECORDS_FOLDER) for folder in journals])
    states = {folder: read_folder_state(folder, journal) for folder, journal in journals.items()}
    todo, done, skipped = plan(works, states, settings, args)
    if args.dry_run:
        return _dry_run(ranks, works, todo, skipped, states)
    # one journal holds the progress counters; each folder's records stay in that folder
    counter = journals[min(journals)]
    run_shared_part(ranks, counter, todo, key=lambda w: w.key, total=len(todo), unit="image", desc="mask", args=args,
                    already=len(done) + len(skipped), make_runner=lambda mine, progress: _runner(args, settings, device, dtype, progress),
                    journal_for=lambda w: journals[w.folder], record_key=lambda w: w.id)
    if not ranks.is_main:
        return 0
    failed_now = _merge(journals, states, settings, {(w.folder, w.id) for w in todo})
    failures = {f"{folder}/{k}": v for folder, (_, failed) in states.items() for k, v in failed.items()}
    print(f"mask: {len(todo) - failed_now} done, {len(done)} already done, {failed_now} failed")
    report_failures("mask", failures, [w.id for w in skipped])
    return exit_status("mask", failed_now)


def _runner(args, settings, device, dtype, progress) -> MaskRunner:
    from ..models.networks.salient import load_salient_model

    return MaskRunner(load_salient_model(args.checkpoint, mode=args.mode, device=device, dtype=dtype), args, settings,
                      progress)


def _merge(journals: dict, states: dict, settings: dict, this_run: set) -> int:
    """Fold each folder's new records into its manifest (main process, all processes done); the failures of the
    items of this run (``this_run``: (folder, id)), not those a stopped run left unmerged."""
    failed_now = 0
    for folder, journal in journals.items():
        rows, failed = states[folder]

        def write(rows, failed, records, folder=folder):
            if records or not os.path.isfile(os.path.join(folder, MANIFEST_JSON)):
                write_folder_manifest(folder, rows, failed, settings)

        merged = resumable.merge(MASK_RECORDS, journal, rows, failed, write)
        failed_now += len(resumable.new_failures(merged.records, {key for f, key in this_run if f == folder}))
    return failed_now


def _dry_run(ranks, works, todo, skipped, states) -> int:
    if not ranks.is_main:
        return 0
    planned, skipping = {id(w) for w in todo}, {id(w) for w in skipped}

    def status(work) -> str:
        reason = states[work.folder][1][work.id]["reason"] if id(work) in skipping else None
        return resumable.status(to_do=id(work) in planned, failed_reason=reason)

    print_dry_run([(os.path.join(w.folder, w.id), w.found.path, status(w)) for w in works],
                  resumable.summary(len(works), "image", len(todo), len(works) - len(todo) - len(skipped), len(skipped)))
    return 0
