"""The run journal (models/runs/journal.py): one append-only file per process, the latest line of a key wins,
damaged lines are ignored, a merge removes a file per process (not one per item)."""
from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from salient_background.models.runs import journal as journal_module
from salient_background.models.runs.journal import Journal


def _files(folder):
    return sorted(p.name for p in (folder / ".records" / "kind").iterdir())


def test_one_process_appends_every_record_to_one_file(tmp_path):
    journal = Journal(str(tmp_path), "kind")
    for i in range(500):
        journal.write(f"item{i:03d}", {"id": f"item{i:03d}", "n": i})
    names = _files(tmp_path)
    assert len(names) == 1 and names[0].endswith(".jsonl") and f".{os.getpid()}." in names[0]
    records = Journal(str(tmp_path), "kind").pending()  # another reader sees every record, written unbuffered
    assert len(records) == 500 and records["item123"] == {"id": "item123", "n": 123}


def test_the_latest_record_of_a_key_wins_within_a_file_and_across_runs(tmp_path):
    first = Journal(str(tmp_path), "kind")
    first.write("a", {"id": "a", "started": {"a": 1}})
    first.write("a", {"id": "a", "rows": 1})  # finished after its started record
    first.write("b", {"id": "b", "failed": "unreadable"})
    first.close()  # a run stopped before its merge
    second = Journal(str(tmp_path), "kind")  # a later run retries b
    second.write("b", {"id": "b", "rows": 2})
    assert len(_files(tmp_path)) == 2
    assert Journal(str(tmp_path), "kind").pending() == {"a": {"id": "a", "rows": 1}, "b": {"id": "b", "rows": 2}}


def test_a_merge_removes_one_file_per_process_not_one_per_item(tmp_path, monkeypatch):
    """What made a 100k-photo merge slower than linear: one unlink per item on a disk still writing back."""
    journal = Journal(str(tmp_path), "kind")
    for i in range(200):
        journal.write(str(i), {"id": str(i)})
    removed = []
    real_remove = os.remove
    monkeypatch.setattr(os, "remove", lambda path: (removed.append(path), real_remove(path)))
    assert len(journal.pending()) == 200
    journal.consume()
    assert len(removed) == 1 and not (tmp_path / ".records").exists()
    journal.write("again", {"id": "again"})  # a journal used after a merge opens a new file
    assert Journal(str(tmp_path), "kind").pending() == {"again": {"id": "again"}}


def test_consume_keeps_a_file_the_merge_did_not_read(tmp_path):
    merging = Journal(str(tmp_path), "kind")
    merging.write("a", {"id": "a"})
    merging.pending()
    late = Journal(str(tmp_path), "kind")
    late.write("b", {"id": "b"})
    merging.consume()
    assert Journal(str(tmp_path), "kind").pending() == {"b": {"id": "b"}}


def test_a_write_cut_short_loses_only_its_own_record(tmp_path, monkeypatch):
    """A disk that fills mid-line: the error names the journal, the cut line is ignored, the next record is read."""
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a"})
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:7])  # what fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as caught:
        journal.write("b", {"id": "b"})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith(".jsonl")
    monkeypatch.setattr(os, "write", real_write)
    journal.write("c", {"id": "c"})  # room again: starts on a line of its own
    assert Journal(str(tmp_path), "kind").pending() == {"a": {"id": "a"}, "c": {"id": "c"}}


def test_damaged_lines_are_named_and_skipped(tmp_path, caplog):
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a"})
    journal.close()
    path, = (tmp_path / ".records" / "kind").glob("*.jsonl")
    with open(path, "ab") as fh:
        fh.write(b"null\n" + b"\x00" * 12 + b"\n" + json.dumps({"key": "b", "record": {"id": "b"}}).encode() + b"\n")
    with caplog.at_level(logging.WARNING, logger="salient_background"):
        assert Journal(str(tmp_path), "kind").pending() == {"a": {"id": "a"}, "b": {"id": "b"}}
    assert f"line 2 of {path}" in caplog.text and f"line 3 of {path}" in caplog.text


def test_records_of_the_per_item_layout_are_read_first_and_merged_away(tmp_path):
    """A folder a run of an earlier version stopped in: one ``<key>.json`` per item."""
    folder = tmp_path / ".records" / "kind"
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps({"id": "a", "failed": "old"}))
    (folder / "z.json").write_text(json.dumps({"id": "z"}))
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a", "rows": 1})  # retried by this version
    assert journal.pending() == {"a": {"id": "a", "rows": 1}, "z": {"id": "z"}}
    journal.consume()
    assert not (tmp_path / ".records").exists()


def test_journal_files_of_several_journals_in_one_process_differ(tmp_path):
    one, two = Journal(str(tmp_path), "kind"), Journal(str(tmp_path), "kind")
    one.write("a", {"id": "a"})
    two.write("b", {"id": "b"})
    assert len(_files(tmp_path)) == 2 and journal_module.JOURNAL_SUFFIX == ".jsonl"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_journals_of_many_folders_keep_no_file_open(tmp_path):
    """`mask` without --output-dir writes beside the photos: one journal per folder, thousands of folders."""
    before = len(os.listdir("/proc/self/fd"))
    journals = [Journal(str(tmp_path / f"folder{i}"), "kind") for i in range(300)]
    for i, journal in enumerate(journals):
        journal.write("a", {"id": "a", "n": i})
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert Journal(str(tmp_path / "folder299"), "kind").pending() == {"a": {"id": "a", "n": 299}}


def test_the_main_bar_shows_what_another_process_did_and_added_to_the_job(tmp_path):
    """Progress across processes: a worker's counts (units done, units added to the planned total, as the quality
    gate adds a round) reach the main process's bar through the progress files."""
    from salient_background.models.runs.engine import RunProgress
    from salient_background.models.runs.ranks import Ranks
    from sb_testkit.progress import recording_bar_class

    bars: list = []
    main = RunProgress(Ranks(0, 2), Journal(str(tmp_path), "generate"), 10, "step", "generate", disable=False,
                       bar_factory=recording_bar_class(bars))
    worker = RunProgress(Ranks(1, 2), Journal(str(tmp_path), "generate"), 10, "step", "generate", disable=False,
                         bar_factory=recording_bar_class(bars))
    main.start()
    worker.start()
    main.advance(4)
    worker.extend(6)
    worker.advance(5)
    worker.finish_own()
    main.extend(2)
    main.advance(3)
    main.close()
    (bar,) = bars  # the worker shows none
    assert (bar.total, bar.n) == (10 + 6 + 2, 4 + 5 + 3)
