"""One resumable output folder, the same for every batch command (``mask``, ``generate``, ``evaluate``).

A folder holds a merged manifest (rows of finished items, failed items with the reason) and the per-item records
(:mod:`models.runs.journal`) that a stopped run did not merge yet. The steps are the same for every command:

1. :func:`read_state` -- the manifest's rows and failures, with the unmerged records folded in: a record is an item
   done (its rows replace the manifest's, a failure of it is forgotten), failed (with the reason), or in flight (a
   photo a stopped run was writing: its rows are there, its files get redone). A damaged record counts as not
   written (the journal says so in a warning).
2. the command decides what is left to do (its own rules: settings that must match, files that must exist);
3. :func:`merge` -- when every process is done, the main process folds the new records in, writes the manifest
   through the command's writer and removes the journal files it read;
4. :func:`status` / :func:`listing` -- a dry run's line per item.

A command describes only what its records hold, through :class:`RecordKind`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Optional


@dataclass(frozen=True)
class RecordKind:
    """What one command's records say.

    ``item_id(record)``: the key of the item in the failures; ``failure(record)``: its entry in the manifest's failed
    list; ``add_rows(rows, record)``: put a finished (or in-flight) record's rows into ``rows``;
    ``failure_drops_row``: a failure removes the item's row (its files are not described any more)."""

    item_id: Callable[[dict], str]
    failure: Callable[[dict], dict]
    add_rows: Callable[[dict, dict], None]
    failure_drops_row: bool = False


def failure_of_item(record: dict) -> dict:
    """The failed-list entry of a record keyed by ``id`` (``mask``'s and ``generate``'s)."""
    return {"id": record["id"], "source": record["source"], "reason": record["failed"]}


@dataclass
class FolderState:
    """What a folder holds: manifest rows and failures by id, with the unmerged ``pending`` records folded in;
    ``started``: what in-flight records name (for ``generate``: tag -> settings of the rows being written)."""

    rows: dict
    failed: dict
    pending: dict = field(default_factory=dict)
    started: dict = field(default_factory=dict)


def fold_records(kind: RecordKind, rows: dict, failed: dict, records: dict) -> dict:
    """Fold ``records`` ({key: record}, in key order) into ``rows`` and ``failed``; returns what in-flight records
    name (their ``started``)."""
    started: dict = {}
    for _, record in sorted(records.items()):
        if "started" in record:  # in flight when its run stopped: rows are there, the item is neither done nor failed
            started.update(record["started"])
            kind.add_rows(rows, record)
        elif "failed" in record:
            if kind.failure_drops_row:
                rows.pop(kind.item_id(record), None)
            failed[kind.item_id(record)] = kind.failure(record)
        else:
            failed.pop(kind.item_id(record), None)
            kind.add_rows(rows, record)
    return started


def read_state(kind: RecordKind, journal, rows: dict, failed: dict) -> FolderState:
    """The folder's state from its manifest's ``rows`` and ``failed`` (read by the command, which knows its files)
    and the records ``journal`` holds that no run merged."""
    pending = journal.pending()
    started = fold_records(kind, rows, failed, pending)
    return FolderState(rows, failed, pending, started)


def new_failures(records: dict, this_run: Collection) -> list[str]:
    """Keys of the failure records of items this run did (``this_run``), not those a stopped run left unmerged."""
    return [key for key, record in records.items() if "failed" in record and key in this_run]


@dataclass
class Merged:
    records: dict  # the records merged now ({key: record})
    rows: dict
    failed: dict


def merge(kind: RecordKind, journal, rows: dict, failed: dict,
          write: Callable[[dict, dict, dict], None]) -> Merged:
    """The main process, every process done: fold the records ``journal`` holds into ``rows`` and ``failed``, write
    the manifest (``write(rows, failed, records)``, which may leave an unchanged one as it is), then remove the
    records the manifest now holds."""
    records = journal.pending()
    fold_records(kind, rows, failed, records)
    write(rows, failed, records)
    journal.consume()
    return Merged(records, rows, failed)


# ---------------------------------------------------------------------------------------------- dry run
def status(*, to_do: bool, failed_reason: Optional[str] = None, to_do_note: str = "") -> str:
    """A dry run's word on one item: skipped as failed before (``failed_reason``), to do, or done."""
    if failed_reason is not None:
        return f"failed before, skipped (--retry-failed): {failed_reason}"
    return f"to do{to_do_note}" if to_do else "done"


def summary(total: int, unit: str, to_do: int, done: int, skipped: int, to_do_note: str = "", extra: str = "") -> str:
    return (f"dry run: {total} {unit}(s); {to_do} to do{to_do_note}, {done} done, {skipped} failed before (skipped)"
            + extra)


def listing(entries, summary_line: str) -> list[str]:
    """A dry run's lines: one ``<id>\\t<input>\\t<status>`` per item, then the summary."""
    return [f"{item_id}\t{source}\t{state}" for item_id, source, state in entries] + [summary_line]
