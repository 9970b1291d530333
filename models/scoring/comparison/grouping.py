"""Which dataset and category each input belongs to, and the table's blocks.

Sources, first match wins per input:

1. a ``category`` (and ``dataset``) entry in the run's own manifest row;
2. a category file (``--categories``): a CSV or JSON list with ``category`` and optionally ``dataset``, and the
   input named by ``image`` (a photo path, relative to the file's folder: the very manifest given to ``generate``,
   matched against the run's ``source``) or by ``id`` (the run's row id);
3. COCO instance annotations (``--coco-annotations instances_*.json``): the photo's file name is looked up in
   ``images``; its category is the *supercategory* of its largest instance (largest ``area``, the segmentation's
   area as COCO records it; ties go to the first listed). A photo without instances has no category.

An input with no category belongs only to its dataset's "all" block. The dataset is ``all`` unless given.
"""
from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from typing import Iterable, Optional

from ...errors import InputError

ALL = "all"


def _read_table(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise InputError(f"category file {path!r} not found")
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            data = data.get("rows", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise InputError(f"category file {path!r} must hold a list of objects")
            return [r for r in data if isinstance(r, dict)]
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read category file {path!r}: {exc}") from exc


def _norm(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


class CategoryFile:
    """``--categories``: (dataset, category) by photo path and by row id."""

    def __init__(self, path: str):
        rows = _read_table(path)
        if rows and "category" not in rows[0] and "dataset" not in rows[0]:
            raise InputError(f"category file {path!r} has neither a 'category' nor a 'dataset' column "
                             f"(its columns: {sorted(rows[0])})")
        base = os.path.dirname(os.path.abspath(path))
        self.by_image, self.by_id = {}, {}
        for row in rows:
            value = (str(row.get("dataset") or "").strip() or None, str(row.get("category") or "").strip() or None)
            image = str(row.get("image") or "").strip()
            if image:
                self.by_image[_norm(image if os.path.isabs(image) else os.path.join(base, image))] = value
            if str(row.get("id") or "").strip():
                self.by_id[str(row["id"]).strip()] = value

    def lookup(self, input_id: str, source: str) -> tuple[Optional[str], Optional[str]]:
        if source and _norm(source) in self.by_image:
            return self.by_image[_norm(source)]
        return self.by_id.get(input_id, (None, None))


def coco_supercategories(path: str) -> dict[str, str]:
    """{image file name: supercategory of its largest instance} from a COCO instances file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        names = {im["id"]: im["file_name"] for im in data["images"]}
        supers = {c["id"]: c.get("supercategory") or c["name"] for c in data["categories"]}
        largest: dict = {}
        for ann in data["annotations"]:
            best = largest.get(ann["image_id"])
            if best is None or float(ann["area"]) > float(best["area"]):
                largest[ann["image_id"]] = ann
    except FileNotFoundError:
        raise InputError(f"COCO annotation file {path!r} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path!r} is not a COCO instances file (images, annotations, categories): {exc}") from exc
    return {os.path.basename(names[i]): supers[a["category_id"]] for i, a in largest.items() if i in names}


def assign_groups(inputs: Iterable[dict], categories: Optional[str] = None,
                  coco_annotations: Optional[str] = None) -> dict[str, tuple[str, Optional[str]]]:
    """{input id: (dataset, category or None)} for rows {id, source[, dataset, category]}."""
    table = CategoryFile(categories) if categories else None
    coco = coco_supercategories(coco_annotations) if coco_annotations else {}
    groups = {}
    for row in inputs:
        dataset, category = (str(row.get("dataset") or "").strip() or None, str(row.get("category") or "").strip() or None)
        if table is not None and (dataset is None or category is None):
            d, c = table.lookup(row["id"], row.get("source") or "")
            dataset, category = dataset or d, category or c
        if category is None and coco:
            category = coco.get(os.path.basename(row.get("source") or ""))
        groups[row["id"]] = (dataset or ALL, category)
    return groups


def blocks(groups: dict[str, tuple[str, Optional[str]]]) -> "OrderedDict[tuple[str, str], list[str]]":
    """The table's blocks, in order: per dataset (sorted; ``all`` first), its whole block then one per category
    (sorted); each lists its input ids (sorted). Keys are ``(dataset, category)``, category ``all`` for the whole."""
    out: OrderedDict = OrderedDict()
    datasets = sorted({d for d, _ in groups.values()}, key=lambda d: (d != ALL, d))
    for dataset in datasets:
        ids = sorted(i for i, (d, _) in groups.items() if d == dataset)
        out[(dataset, ALL)] = ids
        for category in sorted({c for i in ids for c in [groups[i][1]] if c}):
            out[(dataset, category)] = [i for i in ids if groups[i][1] == category]
    return out
