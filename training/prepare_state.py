"""The state ``prepare`` keeps on disk while it works, and the merge into the manifest.

Each process appends what it decides to ``parts/kept-<rank>-of-<world>.jsonl`` and ``parts/rejected-...jsonl`` as it
goes (an interruption loses at most one batch) and leaves ``parts/done-<rank>-of-<world>`` when finished; the last
process to finish merges everything into the manifest and ``rejected.jsonl``. That check-and-merge runs under a
file lock (``.prepare.lock``, through ``filelock``: Windows, Linux and macOS) so that two processes finishing
together cannot both merge.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

from filelock import FileLock

from .data import json_line, read_manifest, write_manifest

LOCK_FILE = ".prepare.lock"


@dataclass
class PrepareReport:
    output_dir: str
    manifest: str
    total: int = 0
    kept_before: int = 0
    rejected_before: int = 0
    processed: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    without_caption: int = 0
    captioned_by: Counter = field(default_factory=Counter)
    merged: bool = False

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file (none when it is absent); a line cut short by an interruption is skipped."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
    return rows


def existing_rows(out_dir: str, manifest_name: str) -> tuple[dict, dict]:
    """(kept rows by image relpath, rejected rows by image relpath) from the manifest, rejects and parts."""
    kept: dict = {}
    manifest = os.path.join(out_dir, manifest_name)
    if os.path.isfile(manifest):
        for row in read_manifest(manifest):
            row = dict(row)
            row["image"] = os.path.relpath(row["image"], out_dir)
            row["mask"] = os.path.relpath(row["mask"], out_dir)
            kept[row["image"]] = row
    rejected = {r["image"]: r for r in read_jsonl(os.path.join(out_dir, "rejected.jsonl"))}
    for part in sorted(glob.glob(os.path.join(out_dir, "parts", "kept-*.jsonl"))):
        for r in read_jsonl(part):
            kept[r["image"]] = r
    for part in sorted(glob.glob(os.path.join(out_dir, "parts", "rejected-*.jsonl"))):
        for r in read_jsonl(part):
            rejected[r["image"]] = r
    # a kept row whose mask vanished is redone
    kept = {k: r for k, r in kept.items() if os.path.isfile(os.path.join(out_dir, r["mask"]))}
    return kept, rejected


def merge_parts(out_dir: str, manifest_name: str, report: PrepareReport) -> None:
    """Manifest + rejected.jsonl + prepare_report.json from everything decided so far; the parts are removed."""
    kept, rejected = existing_rows(out_dir, manifest_name)
    for k in kept:
        rejected.pop(k, None)
    write_manifest(os.path.join(out_dir, manifest_name), [kept[k] for k in sorted(kept)])
    tmp = os.path.join(out_dir, "rejected.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for k in sorted(rejected):
            fh.write(json_line(rejected[k]))
    os.replace(tmp, os.path.join(out_dir, "rejected.jsonl"))
    shutil.rmtree(os.path.join(out_dir, "parts"), ignore_errors=True)
    totals = {"rows": len(kept), "rejected": dict(Counter(r["reason"] for r in rejected.values())),
              "without_caption": sum(1 for r in kept.values() if not r.get("captions"))}
    with open(os.path.join(out_dir, "prepare_report.json"), "w") as fh:
        json.dump({"dataset": totals, "last_run": report.as_dict()}, fh, indent=2, default=str)
    report.merged = True


class PartWriter:
    """This process's part files: kept rows and rejected photos, appended and flushed as they are decided."""

    def __init__(self, out_dir: str, rank: int, world: int):
        self.parts = os.path.join(out_dir, "parts")
        os.makedirs(self.parts, exist_ok=True)
        self.rank, self.world = rank, world
        tag = f"{rank}-of-{world}"
        self.done_marker = os.path.join(self.parts, f"done-{tag}")
        if os.path.exists(self.done_marker):
            os.remove(self.done_marker)
        self.kept = open(os.path.join(self.parts, f"kept-{tag}.jsonl"), "a", encoding="utf-8")
        self.rejected = open(os.path.join(self.parts, f"rejected-{tag}.jsonl"), "a", encoding="utf-8")

    def reject(self, image: str, reason: str, detail: str = "") -> None:
        self.rejected.write(json_line({"image": image, "reason": reason, "detail": detail}))
        self.rejected.flush()

    def keep(self, rows: list) -> None:
        for row in rows:
            self.kept.write(json_line(row))
        self.kept.flush()

    def close(self) -> None:
        self.kept.close()
        self.rejected.close()

    def finish(self, out_dir: str, manifest_name: str, report: PrepareReport) -> None:
        """Mark this process done; the last one to finish (every marker present) merges, under the lock."""
        with open(self.done_marker, "w") as fh:
            fh.write("done\n")
        # the lock file sits beside parts/, which the merge removes
        with FileLock(os.path.join(out_dir, LOCK_FILE)):
            markers = [os.path.join(self.parts, f"done-{r}-of-{self.world}") for r in range(self.world)]
            if all(os.path.exists(m) for m in markers):
                merge_parts(out_dir, manifest_name, report)
