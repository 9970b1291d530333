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
import os
from typing import Iterable

from ..errors import InputError
from .atomic import write_json_atomically

RECORDS_FOLDER = ".records"


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
            try:
                with open(os.path.join(self.folder, name), encoding="utf-8") as fh:
                    records[name[: -len(".json")]] = json.load(fh)
            except (OSError, json.JSONDecodeError):
                continue
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


def read_merged_manifest(path: str) -> dict:
    """The merged manifest a finished run left at ``path`` ({} when there is none or it holds no object); an
    unreadable one is an :class:`InputError` that says how to go on."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path!r} ({exc}): remove that file, or choose another --output-dir") from exc
    return data if isinstance(data, dict) else {}
