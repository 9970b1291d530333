"""What a crash of the machine can leave in an output folder: a journal record or a manifest cut short, emptied or
scrambled. The next run says which file it ignores, counts its items as not done, does them again and ends with
the same files as an undisturbed run (``mask`` with the free stand-in model, in a child process)."""
from __future__ import annotations

import json
import os

import pytest

from sb_testkit.faults import check_presented_files, final_files, journal_files, record_stopped_run, run_mask, write_photos

# what a crash leaves of the journal's last line: zeros (blocks allocated, never written), cut mid-write, blocks of
# another file, valid JSON that is not a record
DAMAGE = {"zeros": lambda line: b"\x00" * len(line), "cut": lambda line: line[: len(line) // 2],
          "scrambled": lambda line: b"\xff\xfe\x00garbage" + line[5:], "not_a_record": lambda line: b"null"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_leftovers")
    write_photos(root / "photos", 4, size=(8, 8), seed=4)
    reference = run_mask(root / "photos", root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root / "photos", final_files(root / "reference")


def _records_of_a_stopped_run(photos, out, reference) -> None:
    """The folder a run stopped before its merge leaves: the outputs of photo000 and photo001 with their records."""
    out.mkdir(parents=True)
    rows = {}
    for name in ("photo000", "photo001"):
        for end in ("_mask.png", "_cutout.png"):
            (out / (name + end)).write_bytes(reference[name + end])
        rows[name] = next(r for r in json.loads(reference["mask_manifest.json"])["rows"] if r["id"] == name)
    record_stopped_run(out, rows)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_journal_record_counts_as_not_done(photos, tmp_path, damage):
    photos_dir, reference = photos
    out = tmp_path / "out"
    _records_of_a_stopped_run(photos_dir, out, reference)
    journal, = journal_files(out)
    first, last, end = journal.read_bytes().split(b"\n")  # photo001's record is the last line
    assert end == b"" and b'"photo001"' in last
    damaged = DAMAGE[damage](last)
    journal.write_bytes(first + b"\n" + damaged + (b"\n" if damage != "cut" else b""))  # a cut line has no end
    kept = os.stat(out / "photo000_mask.png").st_mtime_ns
    rerun = run_mask(photos_dir, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    assert f"ignoring line 2 of {journal}, which cannot be read" in rerun.stderr
    assert "its item counts as not done and is done again" in rerun.stderr
    assert "mask: 3 done, 1 already done, 0 failed" in rerun.stdout  # photo001 redone, photo000 kept
    assert os.stat(out / "photo000_mask.png").st_mtime_ns == kept
    assert final_files(out) == reference  # the damaged record was replaced, then merged and removed
    check_presented_files(out)


# what a crash leaves of a manifest: nothing written yet (delayed allocation), cut mid-write, blocks of another file
MANIFEST_DAMAGE = {"empty": lambda data: b"", "cut": lambda data: data[: len(data) // 2],
                   "scrambled": lambda data: b"\xff\xfe\x00garbage" + data[5:]}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_damaged_manifest_counts_as_absent_and_is_rewritten(photos, tmp_path, damage):
    photos_dir, reference = photos
    out = tmp_path / "out"
    out.mkdir()
    for name, data in reference.items():
        (out / name).write_bytes(data)
    manifest = out / "mask_manifest.json"
    manifest.write_bytes(MANIFEST_DAMAGE[damage](manifest.read_bytes()))
    rerun = run_mask(photos_dir, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    assert f"ignoring {manifest}, which cannot be read" in rerun.stderr and "the items it listed count as not done" in rerun.stderr
    assert "mask: 4 done, 0 already done, 0 failed" in rerun.stdout
    assert final_files(out) == reference
    check_presented_files(out)
