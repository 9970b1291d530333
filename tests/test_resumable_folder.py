"""The one resumable-folder engine (models/runs/resumable.py) on real record files: done, failed, in flight,
damaged records, the merge and the dry-run lines."""
import logging

from salient_background.models.runs import resumable
from salient_background.models.runs.journal import Journal

KIND = resumable.RecordKind(item_id=lambda r: r["id"],
                            failure=lambda r: {"id": r["id"], "source": r["source"], "reason": r["failed"]},
                            add_rows=lambda rows, r: rows.update(r["rows"]))
DROPPING = resumable.RecordKind(KIND.item_id, KIND.failure, lambda rows, r: rows.__setitem__(r["id"], r),
                                failure_drops_row=True)


def test_records_fold_into_done_failed_and_in_flight(tmp_path, caplog):
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a", "rows": {"a": {"n": 2}}})  # done now: no longer failed, row replaced
    journal.write("b", {"id": "b", "source": "/b.png", "failed": "unreadable"})
    journal.write("c", {"id": "c", "started": {"c": {"seed": 1}}, "rows": {"c": {"n": 0}}})  # in flight
    journal.close()
    journal_file, = (tmp_path / ".records" / "kind").glob("*.jsonl")
    with open(journal_file, "ab") as fh:
        fh.write(b'{"key": "d", "record": {"id": "d", "ro')  # cut by a crash
    with caplog.at_level(logging.WARNING, logger="salient_background"):
        state = resumable.read_state(KIND, journal, {"a": {"n": 1}}, {"a": {"id": "a", "reason": "x"}})
    assert state.rows == {"a": {"n": 2}, "c": {"n": 0}}
    assert state.failed == {"b": {"id": "b", "source": "/b.png", "reason": "unreadable"}}
    assert state.started == {"c": {"seed": 1}}
    assert sorted(state.pending) == ["a", "b", "c"]  # the damaged one counts as not written
    assert f"line 4 of {journal_file}" in caplog.text
    assert resumable.new_failures(state.pending, {"b"}) == ["b"] and resumable.new_failures(state.pending, {"a"}) == []


def test_a_failure_drops_the_row_when_the_kind_says_so(tmp_path):
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a", "source": "/a.png", "failed": "gone"})
    state = resumable.read_state(DROPPING, journal, {"a": {"id": "a"}, "b": {"id": "b"}}, {})
    assert state.rows == {"b": {"id": "b"}} and list(state.failed) == ["a"]


def test_merge_writes_through_the_command_and_removes_the_records(tmp_path):
    journal = Journal(str(tmp_path), "kind")
    journal.write("a", {"id": "a", "rows": {"a": {"n": 1}}})
    written = []
    merged = resumable.merge(KIND, journal, {}, {}, lambda rows, failed, records: written.append((rows, failed,
                                                                                                    sorted(records))))
    assert written == [({"a": {"n": 1}}, {}, ["a"])] and merged.rows == {"a": {"n": 1}}
    assert journal.pending() == {} and not (tmp_path / ".records").exists()


def test_dry_run_lines():
    assert resumable.status(to_do=True) == "to do"
    assert resumable.status(to_do=False) == "done"
    assert resumable.status(to_do=True, to_do_note=": 2 image(s)") == "to do: 2 image(s)"
    assert resumable.status(to_do=False, failed_reason="bad") == "failed before, skipped (--retry-failed): bad"
    line = resumable.summary(4, "photo", 1, 2, 1, to_do_note=" (2 image(s))", extra=", 0 more")
    assert line == "dry run: 4 photo(s); 1 to do (2 image(s)), 2 done, 1 failed before (skipped), 0 more"
    assert resumable.listing([("a", "/a.png", "done")], line) == ["a\t/a.png\tdone", line]
