"""Dataset preparation: photos (+ captions) -> salient masks + a manifest the trainer reads.

Inputs: folders of photos (any nesting) and/or COCO-style caption annotations (``captions_train2017.json`` with its
images folder). Per photo:

* the salient mask (object = white, soft, 8-bit PNG at the photo's size) from our InSPyReNet
  (:func:`models.salient.load_salient_model`), batched over consecutive photos of the same size -- or taken from a
  folder of existing masks (``masks_dir``: same relative path, ``.png``), e.g. a salient-object dataset's ground truth;
* captions, first found wins: a sidecar ``<photo>.txt`` (one caption per non-empty line), the COCO annotations,
  BLIP-2 through ``transformers`` from a local model folder the user gives (never downloaded here); photos with none
  are kept with no caption (the trainer then uses "") and counted.

Output folder: ``masks/<source>/<relative path>.png``, ``manifest.jsonl`` (or ``.csv``; one row per photo: ``image``,
``mask`` -- relative to the manifest's folder -- ``captions``, ``width``, ``height``, ``mask_area`` = fraction of the
image the binarised mask covers), ``rejected.jsonl`` (photo, reason, detail) and ``prepare_report.json`` (counts).
With ``copy_images`` the photos are copied under ``images/`` so the folder is self-contained and can move.

Filters (listed in ``rejected.jsonl``, counted, never fatal): unreadable files, empty masks (area < ``min_area``),
masks covering almost everything (area > ``max_area``).

Resumable and idempotent: rows already in the manifest (with their mask on disk) and photos already rejected are not
redone; work in progress is appended to ``parts/`` as it happens, so an interrupted run loses at most one batch.
Several processes (``torchrun --nproc_per_node N -m salient_background.training prepare ...``, or any launcher that
sets ``RANK``/``WORLD_SIZE``) split the photos; the last one to finish merges the parts into the manifest.
"""
from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..models.errors import InputError
from .data import write_manifest

log = logging.getLogger("salient_background")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REASONS = ("unreadable", "empty_mask", "full_mask", "no_mask_file")


@dataclass
class Entry:
    image: str  # absolute path
    source: str  # label of the folder it came from
    rel: str  # path relative to that folder
    captions: list = field(default_factory=list)


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


# ---------------------------------------------------------------------------------------------------------------
# discovery and captions
# ---------------------------------------------------------------------------------------------------------------
def _label(path: str, used: set) -> str:
    base = os.path.basename(os.path.normpath(path)) or "photos"
    label, n = base, 2
    while label in used:
        label, n = f"{base}-{n}", n + 1
    used.add(label)
    return label


def find_photos(folders: Sequence[str], exclude: Sequence[str] = ()) -> list[Entry]:
    """Every image under ``folders`` (any nesting, sorted), skipping anything under ``exclude``."""
    entries, used = [], set()
    excluded = [os.path.abspath(e) + os.sep for e in exclude]
    for folder in folders:
        if not os.path.isdir(folder):
            raise InputError(f"photo folder not found: {folder!r}")
        label = _label(folder, used)
        root = os.path.abspath(folder)
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            if any((dirpath + os.sep).startswith(e) for e in excluded):
                dirnames[:] = []
                continue
            for f in sorted(files):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    full = os.path.join(dirpath, f)
                    entries.append(Entry(full, label, os.path.relpath(full, root)))
    return entries


def coco_entries(annotations: str, images_dir: str, used_labels: Optional[set] = None) -> list[Entry]:
    """Photos of a COCO captions file (``images``: id/file_name, ``annotations``: image_id/caption)."""
    if not os.path.isfile(annotations):
        raise InputError(f"COCO annotations not found: {annotations!r}")
    if not os.path.isdir(images_dir):
        raise InputError(f"COCO images folder not found: {images_dir!r} (give it with --coco-images)")
    with open(annotations, encoding="utf-8") as fh:
        coco = json.load(fh)
    if "images" not in coco or "annotations" not in coco:
        raise InputError(f"{annotations!r} is not a COCO annotations file (needs 'images' and 'annotations')")
    captions: dict = {}
    for ann in coco["annotations"]:
        if "caption" in ann:
            captions.setdefault(ann["image_id"], []).append(" ".join(str(ann["caption"]).split()))
    label = _label(images_dir, used_labels if used_labels is not None else set())
    root = os.path.abspath(images_dir)
    return [Entry(os.path.join(root, im["file_name"]), label, im["file_name"], captions.get(im["id"], []))
            for im in sorted(coco["images"], key=lambda im: im["file_name"])]


def sidecar_captions(image_path: str) -> list[str]:
    stem = os.path.splitext(image_path)[0]
    for candidate in (stem + ".txt", image_path + ".txt", stem + ".caption"):
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8", errors="replace") as fh:
                return [" ".join(line.split()) for line in fh if line.strip()]
    return []


class Blip2Captioner:
    """BLIP-2 captions through ``transformers`` from a LOCAL model folder (e.g. a copy of Salesforce/blip2-opt-2.7b)."""

    def __init__(self, path: str, device: Optional[str] = None, dtype: Optional[torch.dtype] = None,
                 max_new_tokens: int = 30):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        if not os.path.isdir(path):
            raise InputError(f"BLIP-2 folder not found: {path!r}; give a local copy of a BLIP-2 model (no download here)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.processor = Blip2Processor.from_pretrained(path, local_files_only=True)
        self.model = Blip2ForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval()
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, images) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device, self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------------------------
# state on disk
# ---------------------------------------------------------------------------------------------------------------
def _read_jsonl(path: str) -> list[dict]:
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


def _existing_rows(out_dir: str, manifest_name: str) -> tuple[dict, dict]:
    """(kept rows by image relpath, rejected rows by image relpath) from the manifest, rejects and parts."""
    from .data import read_manifest

    kept: dict = {}
    manifest = os.path.join(out_dir, manifest_name)
    if os.path.isfile(manifest):
        for row in read_manifest(manifest):
            row = dict(row)
            row["image"] = os.path.relpath(row["image"], out_dir)
            row["mask"] = os.path.relpath(row["mask"], out_dir)
            kept[row["image"]] = row
    rejected = {r["image"]: r for r in _read_jsonl(os.path.join(out_dir, "rejected.jsonl"))}
    for part in sorted(glob.glob(os.path.join(out_dir, "parts", "kept-*.jsonl"))):
        for r in _read_jsonl(part):
            kept[r["image"]] = r
    for part in sorted(glob.glob(os.path.join(out_dir, "parts", "rejected-*.jsonl"))):
        for r in _read_jsonl(part):
            rejected[r["image"]] = r
    # a kept row whose mask vanished is redone
    kept = {k: r for k, r in kept.items() if os.path.isfile(os.path.join(out_dir, r["mask"]))}
    return kept, rejected


def _merge(out_dir: str, manifest_name: str, report: PrepareReport) -> None:
    kept, rejected = _existing_rows(out_dir, manifest_name)
    for k in kept:
        rejected.pop(k, None)
    write_manifest(os.path.join(out_dir, manifest_name), [kept[k] for k in sorted(kept)])
    tmp = os.path.join(out_dir, "rejected.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for k in sorted(rejected):
            fh.write(json.dumps(rejected[k], ensure_ascii=False) + "\n")
    os.replace(tmp, os.path.join(out_dir, "rejected.jsonl"))
    shutil.rmtree(os.path.join(out_dir, "parts"), ignore_errors=True)
    totals = {"rows": len(kept), "rejected": dict(Counter(r["reason"] for r in rejected.values())),
              "without_caption": sum(1 for r in kept.values() if not r.get("captions"))}
    with open(os.path.join(out_dir, "prepare_report.json"), "w") as fh:
        json.dump({"dataset": totals, "last_run": report.as_dict()}, fh, indent=2, default=str)
    report.merged = True


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    return rank, world


def _load_rgb(path: str):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def prepare_dataset(
    output_dir: str,
    *,
    image_dirs: Sequence[str] = (),
    coco_annotations: Optional[str] = None,
    coco_images: Optional[str] = None,
    segmenter=None,
    masks_dir: Optional[str] = None,
    captioner: Optional[Callable] = None,
    manifest_name: str = "manifest.jsonl",
    batch_size: int = 8,
    min_area: float = 0.005,
    max_area: float = 0.95,
    copy_images: bool = False,
    retry_rejected: bool = False,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    progress: bool = True,
) -> PrepareReport:
    """Prepare (or complete) the dataset in ``output_dir``. ``segmenter``: an object with ``predict(images [B,H,W,3]
    in 0..1) -> .maps [B,H,W]`` (a :class:`models.salient.SalientSegmenter`); or ``masks_dir`` with existing masks.
    ``captioner``: called with a list of PIL images for photos without a caption (e.g. :class:`Blip2Captioner`)."""
    from PIL import Image
    from tqdm import tqdm

    if segmenter is None and masks_dir is None:
        raise InputError("no mask source: give the salient model checkpoint (--salient-checkpoint) or --masks-dir")
    if not manifest_name.endswith((".jsonl", ".csv")):
        raise InputError(f"the manifest must be .jsonl or .csv, got {manifest_name!r}")
    out_dir = os.path.abspath(output_dir)
    os.makedirs(out_dir, exist_ok=True)
    env_rank, env_world = _distributed()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size

    used: set = set()
    entries = find_photos(image_dirs, exclude=[out_dir]) if image_dirs else []
    for e in entries:
        used.add(e.source)
    if coco_annotations:
        entries += coco_entries(coco_annotations, coco_images or os.path.dirname(coco_annotations), used)
    if not entries:
        raise InputError("no photos found: give --images folder(s) and/or --coco-captions with --coco-images")

    def image_rel(e: Entry) -> str:
        if copy_images:
            return os.path.join("images", e.source, e.rel)
        return os.path.relpath(e.image, out_dir)

    kept, rejected = _existing_rows(out_dir, manifest_name)
    if retry_rejected:
        rejected = {}
    report = PrepareReport(out_dir, os.path.join(out_dir, manifest_name), total=len(entries))
    mine = []
    for n, e in enumerate(entries):
        key = image_rel(e)
        if key in kept:
            report.kept_before += 1
        elif key in rejected:
            report.rejected_before += 1
        elif n % world == rank:  # split the full list, not what is left: stable whenever each process starts
            mine.append(e)
    parts = os.path.join(out_dir, "parts")
    os.makedirs(parts, exist_ok=True)
    tag = f"{rank}-of-{world}"
    done_marker = os.path.join(parts, f"done-{tag}")
    if os.path.exists(done_marker):
        os.remove(done_marker)
    kept_fh = open(os.path.join(parts, f"kept-{tag}.jsonl"), "a", encoding="utf-8")
    rej_fh = open(os.path.join(parts, f"rejected-{tag}.jsonl"), "a", encoding="utf-8")

    def reject(e: Entry, reason: str, detail: str = "") -> None:
        report.rejected[reason] += 1
        rej_fh.write(json.dumps({"image": image_rel(e), "reason": reason, "detail": detail}, ensure_ascii=False) + "\n")
        rej_fh.flush()

    bar = tqdm(total=len(mine), desc=f"prepare [{rank + 1}/{world}]" if world > 1 else "prepare",
               disable=not progress, position=rank if world > 1 else None)

    def flush(batch: list) -> None:
        if not batch:
            return
        if masks_dir is not None:
            maps = []
            for e, _ in batch:
                mpath = os.path.join(masks_dir, e.rel)
                mpath = os.path.splitext(mpath)[0] + ".png"
                maps.append(mpath)
        else:
            pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for _, im in batch]))
            with torch.no_grad():
                pred = segmenter.predict(pixels)
            maps = [m.float().clamp(0, 1).cpu() for m in pred.maps]
        pending = []
        for (e, im), m in zip(batch, maps):
            if isinstance(m, str):
                if not os.path.isfile(m):
                    reject(e, "no_mask_file", m)
                    continue
                try:
                    with Image.open(m) as mi:
                        mi = mi.convert("L")
                        if mi.size != im.size:
                            mi = mi.resize(im.size, Image.BILINEAR)
                        m = torch.from_numpy(np.asarray(mi, dtype=np.float32) / 255.0)
                except OSError as exc:
                    reject(e, "unreadable", f"mask {m}: {exc}")
                    continue
            area = float((m >= 0.5).float().mean())
            if area < min_area:
                reject(e, "empty_mask", f"mask area {area:.4f} < {min_area}")
                continue
            if area > max_area:
                reject(e, "full_mask", f"mask area {area:.4f} > {max_area}")
                continue
            mask_rel = os.path.join("masks", e.source, os.path.splitext(e.rel)[0] + ".png")
            os.makedirs(os.path.dirname(os.path.join(out_dir, mask_rel)), exist_ok=True)
            Image.fromarray((m.numpy() * 255).round().astype(np.uint8), mode="L").save(os.path.join(out_dir, mask_rel))
            if copy_images:
                dst = os.path.join(out_dir, image_rel(e))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(e.image, dst)
            captions = sidecar_captions(e.image)
            via = "sidecar"
            if not captions and e.captions:
                captions, via = list(e.captions), "coco"
            pending.append([e, im, captions, via, mask_rel, area])
        if captioner is not None:
            need = [p for p in pending if not p[2]]
            if need:
                for p, text in zip(need, captioner([p[1] for p in need])):
                    p[2], p[3] = ([text] if text else []), "blip2"
        for e, im, captions, via, mask_rel, area in pending:
            if captions:
                report.captioned_by[via] += 1
            else:
                report.without_caption += 1
            row = {"image": image_rel(e), "mask": mask_rel, "captions": captions, "width": im.size[0],
                   "height": im.size[1], "mask_area": round(area, 6)}
            kept_fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            report.kept += 1
        kept_fh.flush()

    batch: list = []
    try:
        for e in mine:
            report.processed += 1
            try:
                im = _load_rgb(e.image)
            except Exception as exc:  # noqa: BLE001 -- any decoder failure is "unreadable", never fatal
                reject(e, "unreadable", f"{type(exc).__name__}: {exc}")
                bar.update(1)
                continue
            if batch and (len(batch) >= batch_size or batch[0][1].size != im.size):
                flush(batch)
                bar.update(len(batch))
                batch = []
            batch.append((e, im))
        flush(batch)
        bar.update(len(batch))
    finally:
        bar.close()
        kept_fh.close()
        rej_fh.close()
    with open(done_marker, "w") as fh:
        fh.write("done\n")
    with open(os.path.join(parts, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        markers = [os.path.join(parts, f"done-{r}-of-{world}") for r in range(world)]
        if all(os.path.exists(m) for m in markers):
            _merge(out_dir, manifest_name, report)
    log.info("prepare: %d photos, %d done before (%d kept, %d rejected); this run: %d processed, %d kept, rejected %s, "
             "%d without caption%s", report.total, report.kept_before + report.rejected_before, report.kept_before,
             report.rejected_before, report.processed, report.kept, dict(report.rejected) or "none",
             report.without_caption, "" if report.merged else " (manifest merged by the last process to finish)")
    return report
