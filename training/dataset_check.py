"""The check of a training manifest before any model is loaded: every row's photo and mask exist, their headers
decode, they are the same size, and the row itself (paths, captions) reads.

Only image headers are read (``PIL.Image.open`` is lazy: it parses the header and stops), on a small thread pool, so
the check takes seconds for 100k rows (``benchmarks/bench_dataset_check.py``). A damaged file whose header is fine
still fails later, when the data loader decodes it; that error names the file (:meth:`SalientTrainingDataset.read_row`).

Bad rows stop the run with one message listing them, or, with ``--skip-bad-rows``, are left out and listed in the run
folder: ``skipped_rows.csv`` for people, ``data_check.json`` for the trainer. A resumed run trains on exactly the rows
the run started with: it refuses a manifest whose bytes changed since, keeps the rows skipped then skipped (even when
their files were fixed since) and refuses rows that went bad since (leaving them out would change the data order).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional, Sequence

from ..models.errors import InputError
from ..models.imaging.picture_files import check_declared_size
from .data import ManifestEntry, parse_manifest

log = logging.getLogger("salient_background")

DATA_CHECK = "data_check.json"  # what a resumed run compares: the manifest's digest and the rows left out
SKIPPED_ROWS = "skipped_rows.csv"
LISTED = 10  # bad rows named in the message; the rest are counted
WORKERS = 8  # header reads in flight (I/O bound: helps most on network or cold disks)
_CHUNK = 256  # rows per task of the pool
_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class BadRow:
    line: int  # in the manifest file
    reason: str


# ---------------------------------------------------------------------------------------------------------------
# one row
# ---------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _converts(mode: str, target: str) -> bool:
    """Whether PIL converts images of ``mode`` to ``target`` (tried once per mode on a 1x1 image)."""
    from PIL import Image

    try:
        Image.new(mode, (1, 1)).convert(target)
        return True
    except Exception:  # noqa: BLE001 -- PIL raises ValueError or OSError depending on the mode
        return False


def _header(path: str, what: str, target: str) -> tuple[Optional[tuple[int, int]], str]:
    """((width, height) as the data loader will see it, "") from the file's header, or (None, the problem)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            check_declared_size(im, path)  # the loader refuses these unread: so does the check
            width, height = im.size
            # PNG keeps EXIF after the pixels at times and PIL would decode them to find it: take it when it is early
            exif_early = im.format != "PNG" or "exif" in im.info
            if what == "photo" and exif_early and im.getexif().get(0x0112, 1) in _TRANSPOSING:
                width, height = height, width  # the loader turns the photo upright, as `prepare` did
            if not _converts(im.mode, target):
                return None, f"{what} {path} is in mode {im.mode}, which cannot be read as {target}"
            return (width, height), ""
    except InputError as exc:
        return None, f"{what} unreadable: {exc}"
    except FileNotFoundError:
        return None, f"{what} not found: {path}"
    except IsADirectoryError:
        return None, f"{what} is a folder: {path}"
    except Exception as exc:  # noqa: BLE001 -- any decoder failure makes the row unusable
        return None, f"{what} unreadable: {path} ({type(exc).__name__}: {exc})"


def row_problem(row: dict) -> str:
    """Why the data loader could not use this manifest row ("" when it can)."""
    photo, problem = _header(row["image"], "photo", "RGB")
    if problem:
        return problem
    mask, problem = _header(row["mask"], "mask", "L")
    if problem:
        return problem
    if mask != photo:
        return f"mask {row['mask']} is {mask[0]}x{mask[1]} but its photo {row['image']} is {photo[0]}x{photo[1]}"
    return ""


def find_bad_rows(entries: Sequence[ManifestEntry], workers: int = WORKERS) -> list[BadRow]:
    """The rows that cannot be used, in manifest order: unreadable rows, then the file checks of the others."""
    readable = [e for e in entries if e.row is not None]

    def check(chunk):
        return [(e.line, row_problem(e.row)) for e in chunk]

    chunks = [readable[i:i + _CHUNK] for i in range(0, len(readable), _CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [r for done in pool.map(check, chunks) for r in done]
    else:
        results = [r for chunk in chunks for r in check(chunk)]
    bad = [BadRow(e.line, e.problem) for e in entries if e.row is None]
    bad += [BadRow(line, problem) for line, problem in results if problem]
    return sorted(bad, key=lambda b: b.line)


# ---------------------------------------------------------------------------------------------------------------
# the run's record
# ---------------------------------------------------------------------------------------------------------------
def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_record(output_dir: str, manifest: str, digest: str, rows: int, skipped: list[BadRow]) -> None:
    record = {"manifest": os.path.abspath(manifest), "manifest_sha256": digest, "rows": rows,
              "skipped": [asdict(b) for b in skipped]}
    _write_atomically(os.path.join(output_dir, DATA_CHECK), json.dumps(record, indent=2) + "\n")
    csv_path = os.path.join(output_dir, SKIPPED_ROWS)
    if skipped:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([["line", "reason"]] + [[b.line, b.reason] for b in skipped])
        _write_atomically(csv_path, buffer.getvalue())
    elif os.path.isfile(csv_path):  # an earlier run's list would describe rows this run trains on
        os.remove(csv_path)


def _read_record(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, DATA_CHECK)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------------------------------------------------------
# the pre-check
# ---------------------------------------------------------------------------------------------------------------
def _listing(bad: Sequence[BadRow], manifest: str) -> str:
    lines = [f"  {os.path.basename(manifest)} line {b.line}: {b.reason}" for b in bad[:LISTED]]
    if len(bad) > LISTED:
        lines.append(f"  ... and {len(bad) - LISTED} more")
    return "\n".join(lines)


def _refuse_bad_rows(bad: Sequence[BadRow], total: int, manifest: str, output_dir: str) -> InputError:
    return InputError(
        f"{len(bad)} of {total} rows of {manifest} cannot be used for training (checked before loading any "
        f"model):\n{_listing(bad, manifest)}\nFix or remove these rows (`training prepare` rebuilds the masks "
        "and the manifest), or train on the other rows with --skip-bad-rows (the skipped rows are then listed in "
        f"{os.path.join(output_dir, SKIPPED_ROWS)})")


def _say(is_main: bool, level: int, message: str, *args) -> None:
    """Log on the main process only (under torchrun every process checks the rows; one says what it found)."""
    log.log(level if is_main else logging.DEBUG, message, *args)


def _rows_of_resumed_run(record: dict, bad: list[BadRow], manifest: str, digest: str, output_dir: str,
                         is_main: bool) -> set:
    """The lines the run being resumed left out; an error when its data can no longer be what it was."""
    if record.get("manifest_sha256") != digest:
        raise InputError(
            f"{manifest} changed since the run in {output_dir!r} started: resuming would train on other data than "
            "its checkpoints did. Put the manifest back as it was, or start a new run in another --output-dir "
            "(to go on from the weights so far: `training export` the checkpoint and pass its folder to "
            "--controlnet)")
    skipped = {int(b["line"]) for b in record.get("skipped", [])}
    gone_bad = [b for b in bad if b.line not in skipped]
    if gone_bad:
        raise InputError(
            f"{len(gone_bad)} rows of {manifest} went bad since the run in {output_dir!r} started, and resuming "
            f"needs the rows it started with:\n{_listing(gone_bad, manifest)}\nRestore these files, or start a new "
            "run in another --output-dir")
    if skipped:
        fixed = len(skipped - {b.line for b in bad})
        _say(is_main, logging.INFO, "%d manifest rows skipped when this run started stay skipped (%s)%s", len(skipped),
                 os.path.join(output_dir, SKIPPED_ROWS),
                 f"; {fixed} of them are fine now and will be used by a new run" if fixed else "")
    return skipped


def training_rows(config, *, resuming: bool, world_size: int = 1, is_main: bool = True,
                  workers: int = WORKERS) -> list[dict]:
    """The manifest rows to train on, after checking every row's files (see the module's docstring). ``resuming``:
    a checkpoint of this run is being resumed. Only the main process writes the run's record."""
    start = time.perf_counter()
    manifest, entries = parse_manifest(config.data)
    bad = find_bad_rows(entries, workers)
    digest = _digest(manifest)
    record = _read_record(config.output_dir) if resuming else None
    if record is not None:
        skipped = _rows_of_resumed_run(record, bad, manifest, digest, config.output_dir, is_main)
    elif bad and not config.skip_bad_rows:
        raise _refuse_bad_rows(bad, len(entries), manifest, config.output_dir)
    else:
        skipped = {b.line for b in bad}
        if is_main:
            _write_record(config.output_dir, manifest, digest, len(entries), bad)
        if bad:
            _say(is_main, logging.WARNING, "skipping %d of %d manifest rows that cannot be used (listed in %s):\n%s",
                 len(bad), len(entries), os.path.join(config.output_dir, SKIPPED_ROWS), _listing(bad, manifest))
    rows = [e.row for e in entries if e.line not in skipped]
    needed = config.batch_size * world_size
    if len(rows) < needed:
        raise InputError(f"{len(rows)} usable training rows cannot fill one batch of {config.batch_size} per process "
                         f"x {world_size} processes; add data or lower --batch-size")
    _say(is_main, logging.INFO, "checked the %d rows of %s in %.1f s", len(entries), manifest,
         time.perf_counter() - start)
    return rows
