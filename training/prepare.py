"""Dataset preparation: photos (+ captions) -> salient masks + a manifest the trainer reads.

Inputs: folders of photos (any nesting) and/or COCO-style caption annotations (``captions_train2017.json`` with its
images folder). Per photo:

* the salient mask (object = white, soft, 8-bit PNG at the photo's size) from our InSPyReNet
  (:func:`models.networks.salient.load_salient_model`), batched over consecutive photos of the same size -- or taken from a
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

import logging
import os
import shutil
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..models.errors import InputError
from .prepare_state import PartWriter, PrepareReport, existing_rows
from .sources import IMAGE_SUFFIXES, Blip2Captioner, Entry, coco_entries, find_photos, load_rgb, sidecar_captions

log = logging.getLogger("salient_background")

REASONS = ("unreadable", "empty_mask", "full_mask", "no_mask_file")

__all__ = ["IMAGE_SUFFIXES", "REASONS", "Blip2Captioner", "Entry", "PrepareReport", "coco_entries", "find_photos",
           "prepare_dataset", "sidecar_captions"]


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    return rank, world


def _gather_entries(out_dir: str, image_dirs, coco_annotations, coco_images) -> list[Entry]:
    used: set = set()
    entries = find_photos(image_dirs, exclude=[out_dir]) if image_dirs else []
    for e in entries:
        used.add(e.source)
    if coco_annotations:
        entries += coco_entries(coco_annotations, coco_images or os.path.dirname(coco_annotations), used)
    if not entries:
        raise InputError("no photos found: give --images folder(s) and/or --coco-captions with --coco-images")
    return entries


class _BatchProcessor:
    """Masks, filters, captions and writes the rows of one batch of same-size photos."""

    def __init__(self, out_dir: str, parts: PartWriter, report: PrepareReport, *, segmenter, masks_dir, captioner,
                 min_area: float, max_area: float, copy_images: bool):
        self.out_dir, self.parts, self.report = out_dir, parts, report
        self.segmenter, self.masks_dir, self.captioner = segmenter, masks_dir, captioner
        self.min_area, self.max_area, self.copy_images = min_area, max_area, copy_images

    def image_rel(self, e: Entry) -> str:
        """The photo's path in the manifest (relative to the dataset folder)."""
        if self.copy_images:
            return os.path.join("images", e.source, e.rel)
        return os.path.relpath(e.image, self.out_dir)

    def reject(self, e: Entry, reason: str, detail: str = "") -> None:
        self.report.rejected[reason] += 1
        self.parts.reject(self.image_rel(e), reason, detail)

    def __call__(self, batch: list) -> None:
        if not batch:
            return
        pending = []
        for (e, im), m in zip(batch, self._maps(batch)):
            m = self._mask_from_file(e, im, m) if isinstance(m, str) else m
            if m is not None:
                kept = self._check_and_save(e, im, m)
                if kept is not None:
                    pending.append(kept)
        self._caption_missing(pending)
        self._write(pending)

    def _maps(self, batch: list) -> list:
        """A mask per photo: the segmenter's map [H,W] in 0..1, or the path of the existing mask file."""
        if self.masks_dir is not None:
            return [os.path.splitext(os.path.join(self.masks_dir, e.rel))[0] + ".png" for e, _ in batch]
        pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for _, im in batch]))
        with torch.no_grad():
            pred = self.segmenter.predict(pixels)
        return [m.float().clamp(0, 1).cpu() for m in pred.maps]

    def _mask_from_file(self, e: Entry, im, path: str) -> Optional[torch.Tensor]:
        from PIL import Image

        if not os.path.isfile(path):
            self.reject(e, "no_mask_file", path)
            return None
        try:
            with Image.open(path) as mi:
                mi = mi.convert("L")
                if mi.size != im.size:
                    mi = mi.resize(im.size, Image.BILINEAR)
                return torch.from_numpy(np.asarray(mi, dtype=np.float32) / 255.0)
        except Exception as exc:  # noqa: BLE001 -- any decoder failure (also PIL's DecompressionBombError) is per photo
            self.reject(e, "unreadable", f"mask {path}: {type(exc).__name__}: {exc}")
            return None

    def _check_and_save(self, e: Entry, im, m: torch.Tensor) -> Optional[list]:
        """Reject an empty or full mask; otherwise save it (and the photo when copying) and gather its captions."""
        from PIL import Image

        area = float((m >= 0.5).float().mean())
        if area < self.min_area:
            self.reject(e, "empty_mask", f"mask area {area:.4f} < {self.min_area}")
            return None
        if area > self.max_area:
            self.reject(e, "full_mask", f"mask area {area:.4f} > {self.max_area}")
            return None
        mask_rel = os.path.join("masks", e.source, os.path.splitext(e.rel)[0] + ".png")
        os.makedirs(os.path.dirname(os.path.join(self.out_dir, mask_rel)), exist_ok=True)
        Image.fromarray((m.numpy() * 255).round().astype(np.uint8), mode="L").save(os.path.join(self.out_dir, mask_rel))
        if self.copy_images:
            dst = os.path.join(self.out_dir, self.image_rel(e))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(e.image, dst)
        captions = sidecar_captions(e.image)
        via = "sidecar"
        if not captions and e.captions:
            captions, via = list(e.captions), "coco"
        return [e, im, captions, via, mask_rel, area]

    def _caption_missing(self, pending: list) -> None:
        """The captioner (one call for the batch) for the photos that have no caption yet."""
        if self.captioner is None:
            return
        need = [p for p in pending if not p[2]]
        if need:
            for p, text in zip(need, self.captioner([p[1] for p in need])):
                p[2], p[3] = ([text] if text else []), "blip2"

    def _write(self, pending: list) -> None:
        rows = []
        for e, im, captions, via, mask_rel, area in pending:
            if captions:
                self.report.captioned_by[via] += 1
            else:
                self.report.without_caption += 1
            rows.append({"image": self.image_rel(e), "mask": mask_rel, "captions": captions, "width": im.size[0],
                         "height": im.size[1], "mask_area": round(area, 6)})
            self.report.kept += 1
        self.parts.keep(rows)


def _process(mine: list, process: _BatchProcessor, batch_size: int, bar) -> None:
    """Read the photos in order and hand them over in batches of consecutive same-size photos."""
    batch: list = []
    for e in mine:
        process.report.processed += 1
        try:
            im = load_rgb(e.image)
        except Exception as exc:  # noqa: BLE001 -- any decoder failure is "unreadable", never fatal
            process.reject(e, "unreadable", f"{type(exc).__name__}: {exc}")
            bar.update(1)
            continue
        if batch and (len(batch) >= batch_size or batch[0][1].size != im.size):
            process(batch)
            bar.update(len(batch))
            batch = []
        batch.append((e, im))
    process(batch)
    bar.update(len(batch))


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
    in 0..1) -> .maps [B,H,W]`` (a :class:`models.networks.salient.SalientSegmenter`); or ``masks_dir`` with existing masks.
    ``captioner``: called with a list of PIL images for photos without a caption (e.g. :class:`Blip2Captioner`)."""
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
    entries = _gather_entries(out_dir, image_dirs, coco_annotations, coco_images)

    kept, rejected = existing_rows(out_dir, manifest_name)
    if retry_rejected:
        rejected = {}
    report = PrepareReport(out_dir, os.path.join(out_dir, manifest_name), total=len(entries))
    parts = PartWriter(out_dir, rank, world)
    process = _BatchProcessor(out_dir, parts, report, segmenter=segmenter, masks_dir=masks_dir, captioner=captioner,
                              min_area=min_area, max_area=max_area, copy_images=copy_images)
    mine = []
    for n, e in enumerate(entries):
        key = process.image_rel(e)
        if key in kept:
            report.kept_before += 1
        elif key in rejected:
            report.rejected_before += 1
        elif n % world == rank:  # split the full list, not what is left: stable whenever each process starts
            mine.append(e)
    bar = tqdm(total=len(mine), desc=f"prepare [{rank + 1}/{world}]" if world > 1 else "prepare",
               disable=not progress, position=rank if world > 1 else None)
    try:
        _process(mine, process, batch_size, bar)
    finally:
        bar.close()
        parts.close()
    parts.finish(out_dir, manifest_name, report)
    log.info("prepare: %d photos, %d done before (%d kept, %d rejected); this run: %d processed, %d kept, rejected %s, "
             "%d without caption%s", report.total, report.kept_before + report.rejected_before, report.kept_before,
             report.rejected_before, report.processed, report.kept, dict(report.rejected) or "none",
             report.without_caption, "" if report.merged else " (manifest merged by the last process to finish)")
    return report
