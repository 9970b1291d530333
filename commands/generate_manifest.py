"""``generate``'s output folder: what its manifest and unmerged records say is there, and writing the manifest
(``manifest.csv`` for ``evaluate --manifest``, ``manifest.json`` with each row's settings and the failed photos)."""
from __future__ import annotations

import csv
import os
from typing import Optional

from ..models.runs.atomic import write_atomically, write_json_atomically
from ..models.runs import resumable
from ..models.runs.journal import read_own_manifest
from ..models.runs.resumable import FolderState, RecordKind
from .generate_plan import Job, abs_path, differing_keys

CSV_FIELDS = ["id", "mask", "generated", "original", "source", "prompt", "negative_prompt", "seeds",
              "controlnet_scale", "restored"]


# a generate record is one photo: its rows (by tag), or its failure; "started" marks a photo being written
GENERATE_RECORDS = RecordKind(item_id=lambda r: r["id"], failure=resumable.failure_of_item,
                              add_rows=lambda rows, r: rows.update(r["rows"]))


def read_state(out: str, journal) -> FolderState:
    """The rows of ``out/manifest.json`` and of unmerged records that still describe files there, by id (images whose
    file is gone are dropped; rows of an older version, which recorded no per-row settings, are left out: their
    images count as undescribed), and the failed photos."""
    data = read_own_manifest(os.path.join(out, "manifest.json"))
    raw = {row.get("id"): row for row in data.get("rows", []) if isinstance(row, dict)}
    failed = {f["id"]: f for f in data.get("failed", []) if isinstance(f, dict) and "id" in f}
    state = resumable.read_state(GENERATE_RECORDS, journal, raw, failed)
    rows = {}
    exists = lambda rel: bool(rel) and os.path.isfile(os.path.join(out, rel))  # noqa: E731
    for tag, row in raw.items():
        if not (isinstance(row.get("settings"), dict) and isinstance(row.get("images"), list)):
            continue
        images = [dict(im, restored=im.get("restored") if exists(im.get("restored")) else "")
                  for im in row["images"] if exists(im.get("generated"))]
        if images:
            rows[tag] = dict(row, images=images)
    return FolderState(rows, failed, state.pending, state.started)


def _csv_row(row: dict) -> dict:
    images = sorted(row["images"], key=lambda im: im["seed"])
    return dict(row, generated=";".join(im["generated"] for im in images),
                seeds=";".join(str(im["seed"]) for im in images),
                restored=";".join(im["restored"] for im in images if im["restored"]))


def write_manifest(out: str, rows: dict[str, dict], run: dict, failed: Optional[dict] = None) -> None:
    """``manifest.csv`` (what ``evaluate --manifest`` reads) and ``manifest.json`` (with each row's settings, and the
    photos that failed with the reason), atomically, sorted by id.

    The JSON's top-level ``settings`` are the run settings when every row shares them, else null and ``mixed_settings``
    names the ones that differ between rows."""
    table = [_csv_row(rows[key]) for key in sorted(rows)]

    def write_csv(tmp):
        # surrogateescape: a photo name that is not UTF-8 is written as its own bytes (not a crash at the end)
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)

    write_atomically(os.path.join(out, "manifest.csv"), write_csv)
    mixed = sorted({k for row in table for k in differing_keys(row["settings"], run, run.keys())})
    meta = {"settings": None if mixed else run, "rows": table}
    if mixed:
        meta["mixed_settings"] = mixed
    if failed:
        meta["failed"] = [failed[key] for key in sorted(failed)]
    write_json_atomically(os.path.join(out, "manifest.json"), meta)


def _new_row(job: Job, run: dict, framed: "FramedPhoto", out: str) -> dict:
    row = {
        "id": job.tag, "mask": os.path.relpath(framed.mask_path, out),
        "original": os.path.relpath(framed.input_path, out),
        "source": abs_path(job.item.path), "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "controlnet_scale": run["controlnet_scale"], "frame": framed.transform.to_dict(), "settings": job.settings(run),
        "images": [],
    }
    if framed.note:
        row["note"] = framed.note
    return row


def record_image(rows: dict, job: Job, run: dict, framed: "FramedPhoto", out: str, restored: str) -> None:
    row = rows.get(job.tag)
    if row is None or row["settings"] != job.settings(run):
        row = rows[job.tag] = _new_row(job, run, framed, out)
    row["frame"] = framed.transform.to_dict()
    row["images"] = sorted([im for im in row["images"] if im["seed"] != job.seed] + [
        {"seed": job.seed, "generated": os.path.join("generated", job.name), "restored": restored}],
        key=lambda im: im["seed"])
