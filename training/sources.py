"""Where training photos and their captions come from: folders of photos, COCO caption files, sidecar text files
and BLIP-2 (from a local model folder, never downloaded here)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..models.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class Entry:
    image: str  # absolute path
    source: str  # label of the folder it came from
    rel: str  # path relative to that folder
    captions: list = field(default_factory=list)


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
    return [Entry(os.path.join(root, im["file_name"]), label, output_rel(im["file_name"]), captions.get(im["id"], []))
            for im in sorted(coco["images"], key=lambda im: im["file_name"])]


def output_rel(file_name: str) -> str:
    """The relative path the outputs of a photo named ``file_name`` get (``masks/<source>/<it>.png``, the copy under
    ``images/``): ``file_name`` itself when it stays below its folder; a name that leaves it (``../x.jpg``, an
    absolute path: legitimate to READ) is flattened into ``_outside/<parts joined by __>``, so nothing is ever
    written outside the dataset folder."""
    normal = os.path.normpath(file_name)
    parts = [p for p in normal.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep) or normal.startswith("../"):
        return os.path.join("_outside", "__".join(parts) or "photo")
    return normal


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


def load_rgb(path: str):
    """The photo as shown (EXIF orientation applied), RGB; a decompression bomb is refused before its pixels are
    allocated (:func:`models.imaging.picture_files.open_picture`)."""
    from ..models.imaging.picture_files import open_picture

    return open_picture(path).convert("RGB")
