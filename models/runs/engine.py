"""Running the items a process owns: batches for the model, reading and writing files on a few threads meanwhile.

``run_items`` keeps the model busy: while a batch is on the model, a small thread pool decodes the photos of the
next batch and encodes (writes) the results of the previous ones. An item that cannot be done (an unreadable
photo, a mask of another size...) fails alone, with its reason, and the run goes on.

``RunProgress`` is the one progress bar of a job: the main process shows the count of every process (the others
write theirs into small files it reads every half second).
"""
from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..errors import UserFacingError

# a test hook: sleep this many seconds after each item's record, so a test can kill a process between items
PAUSE_ENV = "SALIENT_BACKGROUND_PAUSE_AFTER_ITEM"


class ItemFailed(Exception):
    """This item cannot be done (the message says why); the others go on."""


# what reading, computing or writing one item may raise that concerns that item alone
ITEM_ERRORS = (ItemFailed, UserFacingError, OSError, ValueError)


# a write that fails for one of these reasons fails the same way for every item after it (the disk is full, the
# folder read-only or not ours): the run stops, keeping what it finished, instead of recording each item as failed
# (a rerun would then skip them all as "failed before")
# (the first four only a write gives, wherever it happens; EACCES/EPERM also come from reading, so they count only
# while saving an item)
WRITE_ONLY_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG, errno.EROFS)
                              if code is not None)
OUTPUT_ERRNOS = WRITE_ONLY_ERRNOS | {errno.EACCES, errno.EPERM}


class OutputUnwritable(UserFacingError):
    """The outputs cannot be written (disk full, read-only folder): the run stops; a rerun resumes it."""


def output_unwritable(exc: OSError) -> OutputUnwritable:
    where = f" in {os.path.dirname(exc.filename)!r}" if isinstance(exc.filename, str) else ""
    return OutputUnwritable(f"cannot write{where}: {exc.strerror or exc}. The items finished so far are kept: make "
                            "room (or make the folder writable) and rerun the same command to do the rest")


def failure_reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (ItemFailed, UserFacingError)) else f"{type(exc).__name__}: {exc}"


@dataclass
class RunStats:
    wall_seconds: float = 0.0
    model_seconds: float = 0.0  # time in ``compute`` (the model), the rest is waiting for files
    done: int = 0
    failed: int = 0


def run_items(items: Sequence[Any], *, load: Callable, compute: Callable, save: Callable, finish: Callable,
              batch_size: int = 1, io_threads: int = 2) -> RunStats:
    """Do ``items`` in batches of ``batch_size``.

    ``load(item)`` (on a thread) reads the item's files; ``compute([(item, loaded), ...])`` (on this thread: the
    model) returns one result per item, or an :class:`ItemFailed` in its place; ``save(item, result)`` (on a thread)
    writes the outputs and returns the item's record; ``finish(item, record, failure)`` is called once per item with
    the record or the failure reason: on the saving thread right after ``save`` (so an item's record exists as soon
    as its files do: an interrupted run never redoes it), or on this thread for an item that failed earlier.

    A write that fails because the disk is full or the folder read-only (:data:`OUTPUT_ERRNOS`) stops the run with
    :class:`OutputUnwritable` (the item is not recorded: a rerun does it). Ctrl-C (or SIGTERM, which the command line
    turns into the same) stops the loop; the items already handed to the
    file threads are still written and recorded before this returns.
    """
    stats = RunStats()
    start = time.perf_counter()
    batches = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    saving: deque = deque()
    lock = threading.Lock()

    def record(item, record, failure) -> None:
        try:
            finish(item, record, failure)
        except OSError as exc:
            if exc.errno in OUTPUT_ERRNOS:
                raise output_unwritable(exc) from exc
            raise
        with lock:
            stats.done += failure is None
            stats.failed += failure is not None
        pause_for_tests()

    def save_and_record(item, result) -> None:
        try:
            written, failure = save(item, result), None
        except OSError as exc:
            if exc.errno in OUTPUT_ERRNOS:
                raise output_unwritable(exc) from exc
            written, failure = None, failure_reason(exc)
        except ITEM_ERRORS as exc:
            written, failure = None, failure_reason(exc)
        record(item, written, failure)

    def settle(block_beyond: int) -> None:
        while saving and (saving[0].done() or len(saving) > block_beyond):
            saving.popleft().result()  # re-raises what is not an item's own failure

    with ThreadPoolExecutor(max_workers=max(1, io_threads), thread_name_prefix="sb-io") as pool:
        submit_loads = lambda batch: [(item, pool.submit(load, item)) for item in batch]  # noqa: E731
        upcoming = submit_loads(batches[0]) if batches else []
        for index in range(len(batches)):
            current = upcoming
            upcoming = submit_loads(batches[index + 1]) if index + 1 < len(batches) else []
            ready = []
            for item, future in current:
                try:
                    ready.append((item, future.result()))
                except ITEM_ERRORS as exc:
                    record(item, None, failure_reason(exc))
            if ready:
                began = time.perf_counter()
                results = compute(ready)
                stats.model_seconds += time.perf_counter() - began
                for (item, _), result in zip(ready, results):
                    if isinstance(result, ItemFailed):
                        record(item, None, failure_reason(result))
                    else:
                        saving.append(pool.submit(save_and_record, item, result))
            settle(block_beyond=2 * batch_size)  # bounded: finished pictures do not pile up in memory
        settle(block_beyond=0)
    stats.wall_seconds = time.perf_counter() - start
    return stats


def pause_for_tests() -> None:
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


class RunProgress:
    """One bar for the whole job on the main process: ``advance(k)`` counts this process's work; the other
    processes' counts come from the journal's progress files (``journal.write_progress``).

    The bar appears at :meth:`start`, once the models are loaded (their loading is not a step of the job), and
    counts the ``initial`` units an earlier run already did as done."""

    POLL_SECONDS = 0.5

    def __init__(self, ranks, journal, total: int, unit: str, desc: str, disable: bool, bar_factory=None,
                 initial: int = 0):
        self.ranks, self.journal, self.own, self.shown, self.initial = ranks, journal, 0, 0, initial
        self.planned, self.added = total, 0
        self._bar_args = dict(total=total, unit=unit, desc=desc, disable=disable, file=sys.stderr)
        self._bar_factory = bar_factory
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bar = None
        self._poller: Optional[threading.Thread] = None

    def advance(self, k: int = 1) -> None:
        with self._lock:
            self.own += k
        self._changed()

    def extend(self, k: int) -> None:
        """The job grew by ``k`` units that the planned total did not count (the quality gate ran another round)."""
        with self._lock:
            self.added += k
        self._changed()

    def _changed(self) -> None:
        if self.ranks.is_main:
            self._refresh()
        elif time.monotonic() - self._last_write >= self.POLL_SECONDS:
            self._write()

    def _write(self) -> None:
        self._last_write = time.monotonic()
        self.journal.write_progress(self.ranks.rank, self.own, self.added)

    def _refresh(self) -> None:
        if self.bar is None:
            return
        others, others_added = self.journal.read_progress(skip_rank=0) if self.ranks.world > 1 else (0, 0)
        with self._lock:
            total = self.planned + self.added + others_added
            if total != self.bar.total:  # before the count, which never runs past the total
                self.bar.total = total
                self.bar.refresh()
            delta = self.own + others - self.shown
            if delta > 0:
                self.shown += delta
                self.bar.update(delta)

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._refresh()

    def start(self) -> None:
        """Show the bar (main process); announce this process (its counter file names its pid, which the tests use
        to stop one process)."""
        if self.ranks.is_main and self.bar is None:
            factory = self._bar_factory
            if factory is None:
                from tqdm.auto import tqdm as factory
            kwargs = dict(self._bar_args, initial=self.initial) if self.initial else self._bar_args
            self.bar = factory(**kwargs)
            if self.ranks.world > 1:
                self._poller = threading.Thread(target=self._poll, daemon=True, name="sb-progress")
                self._poller.start()
        if self.ranks.world > 1:
            self._write()

    def finish_own(self) -> None:
        """This process did its share (before the closing barrier)."""
        if not self.ranks.is_main:
            self._write()

    def close(self) -> None:
        """After the closing barrier: the main process shows the final count."""
        if self.bar is None:
            return
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        self._refresh()
        self.bar.close()
