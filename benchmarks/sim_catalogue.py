"""Simulation: the run engine over a catalogue of 1k, 10k and 100k photos, with a model that costs nothing.

The real ``mask`` command (ids, journal records, merge, resume, dry run, progress) runs on a folder of N photos
that are hard links to one 8x8 PNG (N names, one inode: nothing to generate), with the stand-in model of
``tests/sb_testkit/faults.py`` (the mask is the red channel). Everything measured is therefore the engine and the
command around the model: finding and naming the inputs, reading what the folder holds, planning, decoding an 8x8
photo, writing two small PNGs and one journal line per item, the merge into ``mask_manifest.json/.csv``.

Per size and per process count (1 alone; 4 under ``torch.distributed.run`` with gloo on the CPU), printed:

* wall seconds of the whole command and milliseconds per item (and per item of the items loop alone);
* the peak resident memory of the largest process (``wait4``'s ``ru_maxrss``) and its growth per item between sizes;
* the seconds of each step: finding the inputs, ids, reading the folder's state, planning, the items, the merge;
* the files the run created per folder: in the output folder, and the journal files (one per process) and records
  the merge read (the merge removes them);
* a dry run of the finished folder (seconds);
* a resumed run after SIGKILL of every process of the run at 50 % (the launcher's group and each torchrun worker,
  which sits in a group of its own): items finished before the kill, items the rerun did, and items **redone**
  (outputs that existed at the kill and were rewritten: the items in flight).

    python benchmarks/sim_catalogue.py [--sizes 1000 10000 100000] [--processes 1 4] [--root /tmp/...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # the stand-in model and its runner

from sb_testkit.faults import fault_env, journal_files, mask_command, recorded, run_pids  # noqa: E402
import salient_background.models.runs.journal  # noqa: E402,F401  (imported now: the first import takes seconds, a 1k run less)


def make_catalogue(folder: str, size: int) -> None:
    import numpy as np
    from PIL import Image

    os.makedirs(folder)
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[2:6, 2:6, 0] = 255
    for i in range(size):
        source = os.path.join(os.path.dirname(folder), f"one{i // 50000}.png")  # ext4 allows 65000 links per file
        if i % 50000 == 0:
            Image.fromarray(pixels).save(source)
        os.link(source, os.path.join(folder, f"p{i:06d}.png"))


def run(photos: str, out: str, processes: int, phases: str, extra=(), kill_at: int = 0) -> dict:
    """One command, its wall time and peak memory; with ``kill_at``, SIGKILL its process group once ``kill_at``
    items have a record (finished), and return the outputs' state at that moment."""
    command = mask_command(photos, out, "--io-threads", "2", *extra, processes=processes)
    command.remove("--no-progress")  # the bar is part of the engine (its counters between processes too)
    began = time.perf_counter()
    with open(os.path.join(os.path.dirname(out), "stderr.log"), "a") as err:
        proc = subprocess.Popen(command, env=fault_env(SB_FAULT_PHASES=phases), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        killed = None
        if kill_at:
            while proc.poll() is None:
                if records_written(out) >= kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    for pid in run_pids(out).values():  # torchrun's workers sit in process groups of their own
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(1.0)
                    killed = snapshot(out)
                    break
                time.sleep(0.05)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"seconds": time.perf_counter() - began, "status": status, "maxrss_mb": usage.ru_maxrss / 1024,
            "killed": killed}


def snapshot(out: str) -> dict:
    """{mask file: mtime_ns} of the masks there, and the ids with a record."""
    masks = {}
    for entry in os.scandir(out):
        if entry.name.endswith("_mask.png"):
            masks[entry.name] = entry.stat().st_mtime_ns
    return {"masks": masks, "records": set(recorded(out))}


def records_written(out: str) -> int:
    """The journal lines written so far (cheap enough to poll: no JSON parsing)."""
    count = 0
    for path in journal_files(out):
        try:
            count += path.read_bytes().count(b"\n")
        except FileNotFoundError:
            pass
    return count


def read_phases(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    main = next(p for p in lines if p.get("rank", 0) == 0)
    os.remove(path)
    return main


def measure(root: str, size: int, processes: int, resume: bool) -> dict:
    base = os.path.join(root, f"n{size}_p{processes}")
    photos, out, phases = os.path.join(base, "photos"), os.path.join(base, "out"), os.path.join(base, "phases.jsonl")
    make_catalogue(photos, size)
    full = run(photos, out, processes, phases)
    p = read_phases(phases)
    files_out = len(os.listdir(out))
    dry = run(photos, out, processes, phases, extra=("--dry-run",))
    os.remove(phases)
    result = {"size": size, "processes": processes, "status": full["status"], "seconds": full["seconds"],
              "maxrss_mb": full["maxrss_mb"], "phases": p, "files_in_output": files_out,
              "records_at_merge": p.get("pending_records_read", 0),
              "journal_files_at_merge": p.get("journal_files_read", 0), "dry_run_seconds": dry["seconds"]}
    result["resume"] = None
    if resume:
        result["resume"] = resume_after_kill(photos, out, processes, phases, size)
    shutil.rmtree(base)
    return result


def resume_after_kill(photos: str, out: str, processes: int, phases: str, size: int) -> dict:
    shutil.rmtree(out)
    killed = run(photos, out, processes, phases, kill_at=size // 2)
    at_kill = killed["killed"]
    rerun = run(photos, out, processes, phases)
    after = snapshot(out) if journal_files(out) else None
    masks_after = {e.name: e.stat().st_mtime_ns for e in os.scandir(out) if e.name.endswith("_mask.png")}
    redone = sum(1 for name, mtime in at_kill["masks"].items() if masks_after.get(name) != mtime)
    finished_at_kill = len(at_kill["records"])
    redone_finished = sum(1 for name, mtime in at_kill["masks"].items()
                          if name[: -len("_mask.png")] in at_kill["records"] and masks_after.get(name) != mtime)
    with open(os.path.join(out, "mask_manifest.json"), encoding="utf-8") as fh:
        rows = len(json.load(fh)["rows"])
    read_phases(phases)  # the rerun's
    return {"finished_at_kill": finished_at_kill, "masks_at_kill": len(at_kill["masks"]),
                        "redone": redone, "redone_of_finished": redone_finished, "rows_after": rows,
                        "rerun_status": rerun["status"], "records_left": None if after is None else len(after["records"])}


def show(r: dict) -> None:
    n, p = r["size"], r["phases"]
    items = p.get("run_shared_part", 0)
    print(f"N={n:>6} processes={r['processes']}: exit {r['status']}, {r['seconds']:.1f} s "
          f"({1000 * r['seconds'] / n:.2f} ms/item; items loop {1000 * items / n:.2f} ms/item), "
          f"peak RSS {r['maxrss_mb']:.0f} MB")
    print("    steps (s): " + ", ".join(f"{k} {p[k]:.2f}" for k in
                                       ("find_images", "output_paths", "read_folder_state", "plan", "run_shared_part",
                                        "_merge") if k in p))
    print(f"    files: {r['files_in_output']} in the output folder; the merge read {r['records_at_merge']} records from "
          f"{r['journal_files_at_merge']} journal file(s), then removed them; dry run {r['dry_run_seconds']:.1f} s")
    s = r["resume"]
    if s is None:
        return
    print(f"    SIGKILL at 50 %: {s['finished_at_kill']} finished, {s['masks_at_kill']} masks on disk; rerun exit "
          f"{s['rerun_status']}: redone {s['redone']} (of them finished before the kill: {s['redone_of_finished']}), "
          f"{s['rows_after']} rows in the manifest after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--resume-up-to", type=int, default=10000,
                        help="measure the resume after a kill at 50 %% for sizes up to this (default 10000)")
    parser.add_argument("--root", default=None, help="where to build the catalogues (default: a temporary folder)")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="sb_sim_")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = []
    for processes in args.processes:
        for size in args.sizes:
            results.append(measure(root, size, processes, size <= args.resume_up_to))
            show(results[-1])
            sys.stdout.flush()
    for processes in args.processes:
        mine = [r for r in results if r["processes"] == processes]
        for a, b in zip(mine, mine[1:]):
            ratio = b["size"] / a["size"]
            print(f"processes={processes}: {a['size']} -> {b['size']} (x{ratio:.0f}): time x{b['seconds'] / a['seconds']:.1f}, "
                  f"merge x{b['phases'].get('_merge', 0) / max(a['phases'].get('_merge', 1e-9), 1e-9):.1f}, "
                  f"peak RSS +{1024 * (b['maxrss_mb'] - a['maxrss_mb']) / (b['size'] - a['size']):.2f} KB/item")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
