"""Faults of the output folder during a run (``mask`` with the free stand-in model, in a child process): the disk
fills up while an image or the manifest is written, the folder turns read-only mid-run. Each time: one clear line,
a status that says "rerun", nothing half-written presented as done, and the same command afterwards ends with the
same files as an undisturbed run, without redoing what was finished."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from salient_background.models.runs.engine import PAUSE_ENV
from sb_testkit.faults import check_presented_files, fault_env, final_files, mask_command, recorded, run_mask, write_photos


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Three small photos then three large ones (a file-size limit between their PNG sizes lets the first three
    finish), and the folder an undisturbed run makes of them."""
    root = tmp_path_factory.mktemp("faults_disk")
    photos = root / "photos"
    write_photos(photos, 3, size=(8, 8), seed=1)
    big = write_photos(root / "big", 3, size=(48, 32), seed=2)
    for k, name in enumerate(big):
        os.replace(root / "big" / name, photos / f"photo{3 + k:03d}.png")
    reference = run_mask(photos, root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return photos, final_files(root / "reference")


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    """Eight 8x8 photos (outputs of a few hundred bytes, a manifest of some kilobytes) and their undisturbed run."""
    root = tmp_path_factory.mktemp("faults_disk_small")
    write_photos(root / "photos", 8, size=(8, 8), seed=3)
    reference = run_mask(root / "photos", root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root / "photos", final_files(root / "reference")


def _finished(out) -> dict:
    """{file: mtime_ns} of the outputs of the items that have a record (finished): what a rerun must not touch."""
    ids = [key for key, record in recorded(out).items() if "failed" not in record]
    return {n: os.stat(out / n).st_mtime_ns for i in ids for n in (f"{i}_mask.png", f"{i}_cutout.png")}


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_full_disk_while_writing_an_image_stops_the_run_and_a_rerun_completes_it(catalogue, tmp_path):
    photos, reference = catalogue
    out = tmp_path / "out"
    full = run_mask(photos, out, SB_FAULT_FSIZE=2000)  # the large photos' cut-outs (~6 kB) no longer fit
    _no_traceback(full)
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"cannot write in {str(out)!r}: File too large" in full.stderr
    assert "rerun the same command" in full.stderr
    assert "failed" not in full.stderr  # the photos are fine: none is recorded as failed
    finished = _finished(out)
    assert sorted(finished) == [f"photo{i:03d}_{k}.png" for i in range(3) for k in ("cutout", "mask")]
    assert not (out / "mask_manifest.json").exists()  # nothing merged: no manifest presents a missing file
    assert not [n for n in os.listdir(out) if ".sbtmp." in n]  # the cut-off temporary file is gone
    rerun = run_mask(photos, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "mask: 3 done, 3 already done, 0 failed" in rerun.stdout  # the three finished are not redone
    assert {n: os.stat(out / n).st_mtime_ns for n in finished} == finished
    assert final_files(out) == reference


def test_a_full_disk_while_writing_the_manifest_keeps_the_records_and_a_rerun_merges_them(small_photos, tmp_path):
    photos, reference = small_photos
    out = tmp_path / "out"
    # every image, the journal of the 8 records and the CSV fit; the JSON manifest (indented) does not
    rows = json.loads(reference["mask_manifest.json"])["rows"]
    journal = sum(len(json.dumps({"key": r["id"], "record": r})) + 1 for r in rows)  # a record is its row
    limit = max(len(reference["mask_manifest.csv"]), journal,
                max(len(v) for k, v in reference.items() if k.endswith(".png")))
    assert limit < len(reference["mask_manifest.json"])
    full = run_mask(photos, out, SB_FAULT_FSIZE=limit + 1)
    _no_traceback(full)
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"cannot write in {str(out)!r}: File too large" in full.stderr and "rerun the same command" in full.stderr
    assert not (out / "mask_manifest.json").exists() and not [n for n in os.listdir(out) if ".sbtmp." in n]
    finished = _finished(out)
    assert len(finished) == 16  # every item finished and recorded; only the merge is missing
    rerun = run_mask(photos, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "mask: 0 done, 8 already done, 0 failed" in rerun.stdout
    assert {n: os.stat(out / n).st_mtime_ns for n in finished} == finished
    assert final_files(out) == reference


def _make_read_only(folder) -> str:
    """Turn ``folder`` read-only for this test's child and say how. Root ignores permission bits, so as root the
    folder is made immutable (``chattr +i``, which root obeys); otherwise ``chmod 555``."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return "chmod"
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return "chattr"
    pytest.skip("running as root where chattr +i does not work: no way to make a folder read-only for root")


def _make_writable(folder, how: str) -> None:
    if how == "chmod":
        os.chmod(folder, 0o755)
    else:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_output_folder_turned_read_only_mid_run_stops_it_and_a_rerun_completes_it(catalogue, tmp_path):
    photos, reference = catalogue
    out = tmp_path / "out"
    proc = subprocess.Popen(mask_command(photos, out), env=fault_env(**{PAUSE_ENV: "0.5"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(recorded(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    how = _make_read_only(out)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        _make_writable(out, how)
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == 2, err[-3000:]
    assert f"cannot write in {str(out)!r}: " in err and "rerun the same command" in err
    assert "failed" not in err  # the photos are fine: none is recorded as failed
    finished = _finished(out)
    assert 4 <= len(finished) < 12
    rerun = run_mask(photos, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"mask: {6 - len(finished) // 2} done, {len(finished) // 2} already done, 0 failed" in rerun.stdout
    assert {n: os.stat(out / n).st_mtime_ns for n in finished} == finished
    assert final_files(out) == reference
    check_presented_files(out)
