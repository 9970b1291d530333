"""``evaluate``'s inputs: pairing generated images with their masks (folders or a manifest), reading them, and
finding the SAM checkpoint -- all checked before any model loads."""
from __future__ import annotations

import argparse
import csv
import logging
import os

from ..models.errors import InputError, UserFacingError

log = logging.getLogger("salient_background")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise InputError(f"not a folder: {folder!r}")
    found = []
    for root, _, files in sorted(os.walk(folder)):
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    return found


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _mask_key(path: str) -> str:
    stem = _stem(path)
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def pair_folders(masks_dir: str, generated_dir: str, originals_dir: str | None = None) -> list[dict]:
    """Rows {id, mask, generated, original} from the folder layout (see the module doc)."""
    masks = {}
    for path in _list_images(masks_dir):
        key = _mask_key(path)
        if key in masks:
            raise InputError(f"two masks for {key!r}: {masks[key]} and {path}")
        masks[key] = path
    originals = {_stem(p): p for p in _list_images(originals_dir)} if originals_dir else {}
    keys_by_length = sorted(masks, key=len, reverse=True)
    rows, unmatched = [], []
    for gen in _list_images(generated_dir):
        stem = _stem(gen)
        key = next((k for k in keys_by_length if stem == k or (stem.startswith(k) and stem[len(k)] in "_-.")), None)
        if key is None:
            unmatched.append(gen)
            continue
        rows.append({"id": key, "mask": masks[key], "generated": gen, "original": originals.get(key, "")})
    if unmatched:
        log.warning("%d generated image(s) match no mask and are skipped, e.g. %s", len(unmatched), unmatched[0])
    if not rows:
        raise InputError(f"no generated image in {generated_dir!r} matches a mask in {masks_dir!r} "
                         "(a generated file must be named <mask name>.png or <mask name>_<anything>.png)")
    return rows


def read_manifest(path: str) -> list[dict]:
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p: str) -> str:
        p = p.strip()
        return p if not p or os.path.isabs(p) else os.path.join(base, p)

    if not os.path.isfile(path):
        raise InputError(f"manifest {path!r} not found{' (it is a folder)' if os.path.isdir(path) else ''}: give the "
                         "CSV file that lists mask and generated")
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:  # non-UTF-8 names as bytes
            reader = csv.DictReader(fh)
            header, records = reader.fieldnames or [], list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the manifest {path!r}: {exc}") from None
    missing = {"mask", "generated"} - set(header)
    if missing:
        raise InputError(f"manifest {path!r} lacks the column(s) {sorted(missing)}; its header is {header}")
    rows = []
    for rec in records:
        for gen in filter(None, (g.strip() for g in (rec.get("generated") or "").split(";"))):
            rows.append({"id": (rec.get("id") or "").strip() or _mask_key(rec["mask"] or ""),
                         "mask": resolve(rec["mask"] or ""), "generated": resolve(gen),
                         "original": resolve(rec.get("original") or "")})
    if not rows:
        raise InputError(f"manifest {path!r} lists no generated image")
    return rows


# ---------------------------------------------------------------------------------------------- files
def load_mask(path: str):
    """Mask file -> [1,H,W] float (white = object; alpha if it has one; 16-bit scaled): the pack's one reading of a
    mask (:func:`models.imaging.image_ops.mask_from_pil`)."""
    import torch

    from ..models.imaging.image_ops import read_mask_file

    return torch.from_numpy(read_mask_file(path))[None]  # bombs refused unread, EXIF orientation as for the photos


def load_image(path: str):
    from ..models.imaging.image_ops import pil_to_image
    from ..models.imaging.picture_files import open_picture

    return pil_to_image(open_picture(path))[0]


def collect_rows(args: argparse.Namespace) -> list[dict]:
    """The (mask, generated, original) rows to score, with absolute paths; a missing file is an error now."""
    rows = read_manifest(args.manifest) if args.manifest else pair_folders(args.masks, args.generated, args.originals)
    for row in rows:
        row["generated"] = os.path.abspath(row["generated"])
        row["mask"] = os.path.abspath(row["mask"])
        row["original"] = os.path.abspath(row["original"]) if row.get("original") else ""
        for key in ("mask", "generated"):
            if not os.path.isfile(row[key]):
                raise InputError(f"{key} file not found: {row[key]!r}")
    return rows


def _read_item(loader, path: str, what: str):
    """``loader(path)``, an unreadable file becoming an :class:`InputError` that names it."""
    try:
        return loader(path)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"cannot read the {what} {path} ({exc})") from None


def resolve_sam(name: str) -> str:
    """A path, or a file name (or a download name such as ``sam-vit-b``) looked up in ComfyUI's ``sams`` folders
    (found as the ``download`` command finds them: the ComfyUI around the pack, ``COMFYUI_PATH``, its
    extra_model_paths.yaml)."""
    from ..models.model_files.model_paths import discover
    from ..models.model_files.model_registry import lookup, where_to_get

    if os.path.isfile(name):
        return name
    if os.path.isdir(name):
        raise InputError(f"--sam {name!r} is a folder: give a SAM checkpoint file (e.g. sam_vit_b_01ec64.pth)")
    published = [m for m in lookup(name) if m.folder == "sams"]
    try:
        folders = discover().paths("sams")
    except UserFacingError:
        folders = []
    for base in folders:
        for candidate in [name] + [m.filename for m in published]:
            if os.path.isfile(os.path.join(base, candidate)):
                return os.path.join(base, candidate)
    raise InputError(f"SAM checkpoint {name!r} not found (not a file; searched: {', '.join(folders) or 'no sams folder known'}). "
                     + where_to_get(published or "sam"))
