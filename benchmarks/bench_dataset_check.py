"""Benchmark: the trainer's data check (every manifest row's photo and mask, headers only) on a large manifest.

Writes ``--rows`` rows of small PNG photos and masks (each row its own two files) and a manifest, once, into a
temporary folder, breaks a few rows (a missing mask, a mask of garbage bytes, a mask of another size; ``--bad`` of
each), then times, interleaved over ``--repeats`` rounds and keeping each arm's fastest:

* ``check``: what the trainer runs before loading any model -- the manifest parsed, every row's headers read on
  ``dataset_check.WORKERS`` threads (:func:`training.dataset_check.find_bad_rows`);
* ``check, 1 thread``: the same on one thread;
* ``full decode``: the baseline -- every photo and mask decoded as the data loader does, one thread.

Prints the seconds, the microseconds per row and the ratios check / full decode and check / check on 1 thread, and
checks that every arm found exactly the broken rows. The files are in the page cache (just written) unless
``--cold`` drops them from it before each arm: then every read goes to the disk, whose latency per file the thread
pool overlaps.

    python benchmarks/bench_dataset_check.py [--rows 10000] [--bad 3] [--size 64] [--repeats 3] [--cold]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def make_dataset(root: str, rows: int, bad: int, size: int) -> list[int]:
    """The files and manifest.jsonl; returns the manifest lines made bad."""
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    height = size * 3 // 4
    with open(os.path.join(root, "manifest.jsonl"), "w") as fh:
        for i in range(rows):
            photo = rng.integers(0, 256, (height, size, 3), dtype=np.uint8)
            mask = np.zeros((height, size), np.uint8)
            mask[height // 4: 3 * height // 4, size // 4: 3 * size // 4] = 255
            Image.fromarray(photo).save(os.path.join(root, "images", f"{i:06d}.png"))
            Image.fromarray(mask).save(os.path.join(root, "masks", f"{i:06d}.png"))
            fh.write(json.dumps({"image": f"images/{i:06d}.png", "mask": f"masks/{i:06d}.png",
                                 "captions": [f"object {i}"], "width": size, "height": height}) + "\n")
    broken = sorted(rng.choice(rows, size=3 * bad, replace=False).tolist())
    for n, i in enumerate(broken):
        mask = os.path.join(root, "masks", f"{i:06d}.png")
        if n % 3 == 0:
            os.remove(mask)
        elif n % 3 == 1:
            with open(mask, "wb") as fh:
                fh.write(b"not a png")
        else:
            Image.new("L", (size + 8, height)).save(mask)
    return [i + 1 for i in broken]


def evict(root: str) -> None:
    """Drop the dataset's files from the page cache (posix_fadvise DONTNEED: our files only, no privileges needed),
    so the next arm reads them from the disk."""
    for folder in ("images", "masks"):
        for name in os.listdir(os.path.join(root, folder)):
            fd = os.open(os.path.join(root, folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)  # written pages must be clean to be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def check(folder: str, workers: int) -> list[int]:
    from salient_background.training import data as tdata
    from salient_background.training.dataset_check import find_bad_rows

    _, entries = tdata.parse_manifest(folder)
    return [b.line for b in find_bad_rows(entries, workers)]


def full_decode(folder: str) -> list[int]:
    """Every file decoded as the data loader decodes it; the rows where that fails or the sizes differ."""
    from PIL import Image

    from salient_background.training import data as tdata
    from salient_background.training.sources import load_rgb

    _, entries = tdata.parse_manifest(folder)
    bad = []
    for e in entries:
        try:
            photo = load_rgb(e.row["image"])
            with Image.open(e.row["mask"]) as im:
                mask = im.convert("L")
            if mask.size != photo.size:
                bad.append(e.line)
        except Exception:  # noqa: BLE001 -- any failure makes the row bad
            bad.append(e.line)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--bad", type=int, default=3, help="rows broken of each kind")
    parser.add_argument("--size", type=int, default=64, help="photo width in pixels (height 3/4 of it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="threads of the check (default: the trainer's)")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before each arm "
                                                            "(Linux): reads come from the disk")
    args = parser.parse_args()
    from salient_background.training.dataset_check import WORKERS

    workers = args.workers or WORKERS
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        broken = make_dataset(root, args.rows, args.bad, args.size)
        print(f"{args.rows} rows ({len(broken)} broken) written in {time.perf_counter() - start:.1f} s")
        arms = {f"check ({workers} threads)": lambda: check(root, workers), "check, 1 thread": lambda: check(root, 1),
                "full decode, 1 thread": lambda: full_decode(root)}
        best = {name: float("inf") for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                if args.cold:
                    evict(root)
                start = time.perf_counter()
                found = arm()
                best[name] = min(best[name], time.perf_counter() - start)
                assert found == broken, (name, found, broken)
        for name, seconds in best.items():
            print(f"{name:24s} {seconds:7.2f} s  {seconds / args.rows * 1e6:7.1f} us/row")
        ours = best[f"check ({workers} threads)"]
        print(f"ratio check / full decode: {ours / best['full decode, 1 thread']:.3f}")
        print(f"ratio check / check on 1 thread: {ours / best['check, 1 thread']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
