"""Per-item records of a run, written by whichever process did the item and merged by the main process.

Each process appends one JSON line per finished (or failed, or started) item to its own journal file,
``<folder>/.records/<kind>/<start>.<host>.<pid>.<n>.jsonl`` (``<start>``: when its first record was written, in ns,
so names sort in the order the runs began), right after the item's outputs. A process therefore never writes a file
another process writes, and a run killed at any moment loses at most the items in flight: their outputs are redone,
and rewritten whole. One file per process, not per item: a 100,000-photo catalogue leaves a handful of files for the
merge to read and remove (one file per item cost a disk write-back per unlink at that size).

A line is ``{"key": ..., "record": {...}}``; a later line of the same key replaces an earlier one (a photo's "started"
record, then its finished one; a failure, then a retried success in a later run). A line cut short by a crash is
ignored with a warning: its item counts as not done.

When every process is done, the main process folds the records into the command's manifest and removes the journal
files, so the records folder only ever holds what a finished run has not merged yet; the next run (resumed or not)
reads the manifest and these records together.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from ..errors import InputError
from .atomic import write_json_atomically

RECORDS_FOLDER = ".records"

log = logging.getLogger("salient_background")
_told: set = set()  # the unreadable files already named (each once per process, not at every read)


def _say_unreadable(path: str, exc: BaseException, consequence: str) -> None:
    if path not in _told:
        _told.add(path)
        log.warning("ignoring %s, which cannot be read (%s; left by a crash?): %s", path, exc, consequence)


JOURNAL_SUFFIX = ".jsonl"
_journal_numbers = itertools.count()  # several journals of one process (one per output folder) get their own files


def _read_journal_file(path: str, records: dict) -> bool:
    """Fold the lines of one journal file into ``records`` (read line by line: a 100k-item journal is never held
    whole); False when the file cannot be opened."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        _say_unreadable(path, exc, "its items count as not done and are done again")
        return False
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if not (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                        and isinstance(entry.get("record"), dict)):
                    raise ValueError("not a record line")
            except ValueError as exc:  # not JSON, not UTF-8, cut short by a crash, or another shape
                _say_unreadable(f"line {number} of {path}", exc, "its item counts as not done and is done again")
                continue
            records[entry["key"]] = entry["record"]
    return True


def _read_legacy_record(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not a record")
        return record
    except (OSError, ValueError) as exc:
        _say_unreadable(path, exc, "its item counts as not done and is done again")
        return None


class Journal:
    """The records of one kind (``mask``, ``generate``, ``evaluate``) in one folder: this process appends to its own
    journal file (opened at its first record); :meth:`pending` reads every process's."""

    def __init__(self, folder: str, kind: str):
        self.folder = os.path.join(folder, RECORDS_FOLDER, kind)
        self.progress_folder = os.path.join(folder, RECORDS_FOLDER, kind + ".progress")
        self._lock = threading.Lock()  # records come from the file threads
        self._path: Optional[str] = None  # this journal's file, named at its first record
        self._cut = False  # the last append was cut short (disk full): the next one starts on a new line
        self._read: list[str] = []  # the journal files the last :meth:`pending` read (what a merge removes)

    def write(self, key: str, record: dict) -> None:
        """Append ``record`` of ``key``. The file is opened for each record and closed again: a run that writes
        beside the photos of thousands of folders keeps no file open per folder."""
        line = json.dumps({"key": key, "record": record}, ensure_ascii=True) + "\n"
        with self._lock:
            if self._path is None:
                os.makedirs(self.folder, exist_ok=True)
                name = f"{time.time_ns():020d}.{socket.gethostname()}.{os.getpid()}.{next(_journal_numbers)}"
                self._path = os.path.join(self.folder, name + JOURNAL_SUFFIX)
            data = (("\n" + line) if self._cut else line).encode("ascii")
            self._cut = True
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o644)
                try:
                    while data:  # a write past a file-size limit writes what fits and fails on the next call
                        data = data[os.write(fd, data):]
                finally:
                    os.close(fd)
            except OSError as exc:
                exc.filename = exc.filename or self._path
                raise
            self._cut = False

    def close(self) -> None:
        """End this journal file: a later record starts a new one (as a new run's would)."""
        with self._lock:
            self._path, self._cut = None, False

    def pending(self) -> dict[str, dict]:
        """``{key: record}`` of the records not merged yet, the latest of each key (an unreadable line counts as not
        written)."""
        self._read = []
        if not os.path.isdir(self.folder):
            return {}
        records: dict[str, dict] = {}
        names = sorted(os.listdir(self.folder))
        for name in names:  # records of the per-item layout of earlier versions: older than any journal file
            if name.endswith(".json") and not name.startswith("."):
                record = _read_legacy_record(os.path.join(self.folder, name))
                self._read.append(os.path.join(self.folder, name))
                if record is not None:
                    records[name[: -len(".json")]] = record
        for name in names:
            if name.endswith(JOURNAL_SUFFIX) and not name.startswith("."):
                path = os.path.join(self.folder, name)
                if _read_journal_file(path, records):
                    self._read.append(path)
        return records

    def consume(self) -> None:
        """After a merge (every process done): remove the journal files the last :meth:`pending` read (the manifest
        now holds their records), the progress counters, and the folders once empty."""
        self.close()
        self.clear_progress()
        for path in self._read:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._read = []
        for folder in (self.folder, self.progress_folder, os.path.dirname(self.folder)):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (other kinds, records left) or absent
                pass

    def clear(self) -> None:
        """Remove every record (a run that starts afresh)."""
        self.pending()
        self.consume()

    # -- progress counters: one small file per process, summed by the main process's progress bar
    def write_progress(self, rank: int, done: int, added: int = 0) -> None:
        """This process's counts: units ``done``, and units ``added`` to the job's planned total (work found on
        the way, e.g. another round of the quality gate)."""
        os.makedirs(self.progress_folder, exist_ok=True)
        write_json_atomically(os.path.join(self.progress_folder, f"rank{rank}.json"),
                              {"done": done, "added": added, "pid": os.getpid()})

    def read_progress(self, skip_rank: int = 0) -> tuple[int, int]:
        """(done, added) summed over the other processes' counts."""
        done = added = 0
        if not os.path.isdir(self.progress_folder):
            return 0, 0
        for name in os.listdir(self.progress_folder):
            if name.startswith("rank") and name.endswith(".json") and name != f"rank{skip_rank}.json":
                try:
                    with open(os.path.join(self.progress_folder, name), encoding="utf-8") as fh:
                        counts = json.load(fh)
                    done, added = done + int(counts.get("done", 0)), added + int(counts.get("added", 0))
                except (OSError, ValueError, AttributeError):
                    continue
        return done, added

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
