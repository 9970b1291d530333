"""``python -m salient_background mask``: one output per input (no overwriting), clear errors, atomic files; and the
shared id scheme of :mod:`models.item_ids`."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background import cli
from salient_background.models.runs.atomic import write_atomically
from salient_background.models.runs import item_ids


@pytest.fixture
def stub_salient(monkeypatch, tmp_path):
    """InSPyReNet stand-in: the mask is the photo's red channel (so each output shows which photo it came from).
    The checkpoint named on the command line (``unused.pth``, in the working folder) exists, as a run checks."""
    import salient_background.models.networks.salient as salient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "unused.pth").write_bytes(b"")

    class Stub:
        def predict(self, images, **kw):
            maps = images[..., 0].float()
            return salient.SalientPrediction(maps=maps, raw_max=torch.ones(images.shape[0]), empty=[False] * images.shape[0])

    loads = []
    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: loads.append(1) or Stub())
    return loads


def _photo(path, red: int, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[..., 0] = red
    Image.fromarray(pixels).save(path)


def _mask(*args) -> int:
    return cli.main(["mask", *map(str, args), "--checkpoint", "unused.pth", "--device", "cpu"])


def test_inputs_sharing_a_file_name_do_not_overwrite_each_other(tmp_path, stub_salient):
    photos = tmp_path / "photos"
    _photo(photos / "a" / "x.png", 10)
    _photo(photos / "b" / "x.png", 20)
    _photo(photos / "y.png", 30)
    out = tmp_path / "out"
    assert _mask(photos, "--output-dir", out) == 0
    names = sorted(n for n in os.listdir(out) if n.endswith(".png"))  # beside them: mask_manifest.csv/.json
    assert names == ["a__x_cutout.png", "a__x_mask.png", "b__x_cutout.png", "b__x_mask.png", "y_cutout.png", "y_mask.png"]
    assert np.asarray(Image.open(out / "a__x_mask.png")).max() == 10 and np.asarray(Image.open(out / "b__x_mask.png")).max() == 20
    # two files with one name given on their own: a suffix from the path, the same whatever the order
    single = tmp_path / "single"
    assert _mask(photos / "b" / "x.png", photos / "a" / "x.png", "--output-dir", single) == 0
    first = sorted(n for n in os.listdir(single) if n.endswith(".png"))
    assert len(first) == 4 and all(n.startswith("x+") for n in first)
    for name in os.listdir(single):
        os.remove(single / name)
    assert _mask(photos / "a" / "x.png", photos / "b" / "x.png", "--output-dir", single) == 0
    assert sorted(n for n in os.listdir(single) if n.endswith(".png")) == first
    assert not [n for n in os.listdir(out) + os.listdir(single) if n.endswith(".tmp")]


def test_simple_folder_keeps_its_names_next_to_the_photos(tmp_path, stub_salient):
    _photo(tmp_path / "cat.png", 50)
    _photo(tmp_path / "cat.jpg", 60)  # same stem in the same folder: would share cat_mask.png
    assert _mask(tmp_path / "cat.png") == 0
    assert (tmp_path / "cat_mask.png").is_file() and (tmp_path / "cat_cutout.png").is_file()
    os.remove(tmp_path / "cat_mask.png")
    os.remove(tmp_path / "cat_cutout.png")
    assert _mask(tmp_path) == 0
    masks = sorted(n for n in os.listdir(tmp_path) if n.endswith("_mask.png"))
    assert len(masks) == 2 and all(n.startswith("cat+") for n in masks)


def test_bad_output_folder_and_device_are_one_line_errors_before_the_model_loads(tmp_path, stub_salient, capsys):
    _photo(tmp_path / "p.png", 1)
    (tmp_path / "file.txt").write_text("x")
    assert _mask(tmp_path / "p.png", "--output-dir", tmp_path / "file.txt") == 2
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["mask", str(tmp_path / "p.png"), "--checkpoint", "unused.pth", "--device", "gpu0"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert stub_salient == []


# ---------------------------------------------------------------------------------------------- the id scheme
def test_ids_keep_simple_names_and_never_collide_whatever_the_order():
    inputs = [("/p/a/x.png", "a__x"), ("/p/b/x.png", "b__x"), ("/p/x.png", "x"), ("/q/x.png", "x"), ("/p/x.jpg", "x"),
              ("/p/a b.png", "a_b"), ("/p/a_b.png", "a_b"), ("/p/y.png", "y")]
    ids = item_ids.assign_ids(inputs)
    assert len(set(ids.values())) == len(inputs)
    assert ids["/p/a/x.png"] == "a__x" and ids["/p/y.png"] == "y"
    assert all(ids[i].startswith("x+") for i in ("/p/x.png", "/q/x.png", "/p/x.jpg"))
    for order in itertools.permutations(inputs[:5]):
        sub = item_ids.assign_ids(order)
        assert sub == {identity: ids[identity] for identity, _ in inputs[:5]}
    # a suffixed id cannot be another input's name: base names never contain the mark
    assert item_ids.safe_name("x+1234abcd") == "x_1234abcd"
    assert item_ids.colliding_groups(ids)["x"] == ["/p/x.jpg", "/p/x.png", "/q/x.png"]


def test_base_names():
    root = os.path.join("data", "photos")
    assert item_ids.base_name(os.path.join(root, "a", "x.png"), root) == "a__x"
    assert item_ids.base_name(os.path.join(root, "x.png"), root) == "x"
    assert item_ids.base_name(os.path.join("elsewhere", "my photo.JPG")) == "my_photo"


def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.csv"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(str(target), fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["manifest.csv"]


# ---------------------------------------------------------------------------------------------- re-runs
def test_rerun_skips_finished_masks_refuses_other_settings_and_notes_empty_objects(tmp_path, stub_salient, monkeypatch,
                                                                                   capsys):
    import json

    import salient_background.models.networks.salient as salient

    photos, out = tmp_path / "photos", tmp_path / "out"
    _photo(photos / "red.png", 200)
    _photo(photos / "black.png", 0)  # the stub finds no object in it
    real_stub = salient.load_salient_model

    class EmptyAware:  # the stub, except that a black photo has no object
        def __init__(self, inner):
            self.inner = inner

        def predict(self, images, **kw):
            p = self.inner.predict(images, **kw)
            return salient.SalientPrediction(maps=p.maps, raw_max=p.raw_max, empty=[bool(m.max() == 0) for m in p.maps])

    monkeypatch.setattr(salient, "load_salient_model", lambda *a, **k: EmptyAware(real_stub(*a, **k)))
    assert _mask(photos, "--output-dir", out) == 0
    meta = json.loads((out / "mask_manifest.json").read_text())
    assert [(r["id"], r.get("note", "")) for r in meta["rows"]] == [("black", "no salient object found: the mask is empty"),
                                                                       ("red", "")]
    assert meta["settings"]["binary"] is False and not (out / ".records").exists()
    stamp = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    capsys.readouterr()
    assert _mask(photos, "--output-dir", out) == 0 and len(stub_salient) == 1  # nothing to do: no model loaded
    assert "0 done, 2 already done" in capsys.readouterr().out
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == stamp
    assert _mask(photos, "--output-dir", out, "--binary") == 2
    assert "other settings" in capsys.readouterr().err
    assert _mask(photos, "--output-dir", out, "--binary", "--overwrite") == 0
    assert json.loads((out / "mask_manifest.json").read_text())["settings"]["binary"] is True


# ---------------------------------------------------------------------------------------------- before any model
def test_a_dry_run_checks_the_checkpoint_as_a_real_run_does(tmp_path, stub_salient, capsys):
    _photo(tmp_path / "p.png", 1)
    missing = str(tmp_path / "nonexistent.pth")
    errors = []
    for extra in ([], ["--dry-run"]):
        assert cli.main(["mask", str(tmp_path / "p.png"), "--checkpoint", missing, *extra]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1] == f"error: InSPyReNet checkpoint not found: {missing!r} is not a file\n"
    assert stub_salient == []


def test_temporaries_of_a_writer_killed_mid_write_are_removed_by_the_next_run(tmp_path, stub_salient):
    import signal
    import subprocess
    import sys
    import time

    from salient_background.models.runs.atomic import temporary_name

    photos, out = tmp_path / "photos", tmp_path / "out"
    _photo(photos / "a.png", 10)
    out.mkdir()
    # a writer killed (SIGKILL) while writing out/a_mask.png: its temporary file stays behind
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from salient_background.models.runs.atomic import write_atomically\n"
        "def write(tmp):\n"
        "    open(tmp, 'wb').write(b'half a picture')\n"
        "    time.sleep(600)\n"
        f"write_atomically({str(out / 'a_mask.png')!r}, write)\n")])
    deadline = time.monotonic() + 120
    while not any(".sbtmp." in n for n in os.listdir(out)):
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [stale] = [n for n in os.listdir(out) if ".sbtmp." in n]
    # a live writer's temporary and a file that is not ours stay
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live_tmp = os.path.basename(temporary_name(str(out / "b_mask.png"))).replace(f".{os.getpid()}.", f".{live.pid}.")
        (out / live_tmp).write_bytes(b"being written")
        (out / ".notes.tmp").write_text("someone else's")
        assert _mask(photos, "--output-dir", out) == 0
        left = sorted(n for n in os.listdir(out) if n.startswith("."))
        assert stale not in left and left == sorted([live_tmp, ".notes.tmp"])
        assert (out / "a_mask.png").is_file()
    finally:
        live.kill()
        live.wait()


def test_a_failure_a_stopped_run_recorded_is_no_new_failure_of_the_rerun(tmp_path, stub_salient, capsys):
    import json

    from sb_testkit.faults import record_stopped_run

    photos, out = tmp_path / "photos", tmp_path / "out"
    _photo(photos / "a.png", 10)
    (photos / "broken.png").write_bytes(b"not an image")
    # what a run stopped before its merge leaves: the failure's record, not merged into the manifest
    record_stopped_run(out, {"broken": {"id": "broken", "source": str(photos / "broken.png"), "failed": "cannot read it"}})
    assert _mask(photos, "--output-dir", out) == 0  # skipped as failed before: nothing failed anew
    captured = capsys.readouterr()
    assert "mask: 1 done, 0 already done, 0 failed" in captured.out and "1 skipped now as failed before" in captured.err
    assert json.loads((out / "mask_manifest.json").read_text())["failed"][0]["reason"] == "cannot read it"
