"""Per-item records of a run, written by whichever process did the item and merged by the main process.

Each finished (or failed) item gets one small JSON file, ``<folder>/.records/<kind>/<key>.json``, written
atomically right after the item's outputs. A process therefore never writes a file another process writes, and a
run killed at any moment loses at most the items in flight: their outputs are redone, and rewritten whole.

When every process is done, the main process folds the records into the command's manifest and removes them, so
the records folder only ever holds what a finished run has not merged yet; the next run (resumed or not) reads
the manifest and these records together.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable

from ..errors import InputError
from .atomic import write_json_atomically

RECORDS_FOLDER = ".records"

log = logging.getLogger("salient_background")
_told: set = set()  # the unreadable files already named (each once per process, not at every read)


def _say_unreadable(path: str, exc: BaseException, consequence: str) -> None:
    if path not in _told:
        _told.add(path)
        log.warning("ignoring %s, which cannot be read (%s; left by a crash?): %s", path, exc, consequence)


class Journal:
    def __init__(self, folder: str, kind: str):
        self.folder = os.path.join(folder, RECORDS_FOLDER, kind)
        self.progress_folder = os.path.join(folder, RECORDS_FOLDER, kind + ".progress")

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key + ".json")

    def write(self, key: str, record: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        write_json_atomically(self._path(key), record)

    def pending(self) -> dict[str, dict]:
        """``{key: record}`` of the records not merged yet (an unreadable one counts as not written)."""
        if not os.path.isdir(self.folder):
            return {}
        records = {}
        for name in sorted(os.listdir(self.folder)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.folder, name)
            try:
                with open(path, encoding="utf-8") as fh:
                    record = json.load(fh)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not a record")
            except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 (garbage blocks after a crash)
                _say_unreadable(path, exc, "its item counts as not done and is done again")
                continue
            records[name[: -len(".json")]] = record
        return records

    def consume(self, keys: Iterable[str]) -> None:
        """Remove merged records (the manifest now holds them), the progress counters, and the folders once empty."""
        self.clear_progress()
        for key in keys:
            try:
                os.remove(self._path(key))
            except FileNotFoundError:
                pass
        for folder in (self.folder, self.progress_folder, os.path.dirname(self.folder)):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (other kinds, records left) or absent
                pass

    # -- progress counters: one small file per process, summed by the main process's progress bar
    def write_progress(self, rank: int, done: int) -> None:
        os.makedirs(self.progress_folder, exist_ok=True)
        write_json_atomically(os.path.join(self.progress_folder, f"rank{rank}.json"), {"done": done, "pid": os.getpid()})

    def read_progress(self, skip_rank: int = 0) -> int:
        total = 0
        if not os.path.isdir(self.progress_folder):
            return 0
        for name in os.listdir(self.progress_folder):
            if name.startswith("rank") and name.endswith(".json") and name != f"rank{skip_rank}.json":
                try:
                    with open(os.path.join(self.progress_folder, name), encoding="utf-8") as fh:
                        total += int(json.load(fh).get("done", 0))
                except (OSError, ValueError, AttributeError):
                    continue
        return total

    def clear_progress(self) -> None:
        if os.path.isdir(self.progress_folder):
            for name in os.listdir(self.progress_folder):
                if name.startswith("rank"):
                    try:
                        os.remove(os.path.join(self.progress_folder, name))
                    except FileNotFoundError:
                        pass


def read_own_manifest(path: str) -> dict:
    """The manifest a run of this command merged at ``path``, for the command that writes it: one that cannot be
    read (cut short or scrambled by a crash of the machine) is said and counts as absent: its items are done again
    and the next merge rewrites it whole."""
    try:
        return read_merged_manifest(path)
    except InputError as exc:
        _say_unreadable(path, exc.__cause__ or exc, "the items it listed count as not done and are done again")
        return {}


def read_merged_manifest(path: str) -> dict:
    """The merged manifest a finished run left at ``path`` ({} when there is none or it holds no object); an
    unreadable one is an :class:`InputError` that says how to go on."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise InputError(f"cannot read {path!r} ({exc}): remove that file, or choose another --output-dir") from exc
    return data if isinstance(data, dict) else {}
