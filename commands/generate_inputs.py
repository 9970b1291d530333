"""``generate``'s inputs: photos, folders and input manifests, each photo with its id, prompts and mask file."""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from ..models.errors import InputError
from ..models.runs.item_ids import assign_ids, base_name, colliding_groups, safe_name
from .files import IMAGE_SUFFIXES, find_images

log = logging.getLogger("salient_background")

MANIFEST_SUFFIXES = (".csv", ".json")


@dataclass
class Item:
    """One photo to work on. ``id`` names its outputs; ``identity`` tells inputs apart (see models.item_ids)."""

    path: str
    id: str = ""
    prompts: list = field(default_factory=list)
    negative_prompt: Optional[str] = None
    mask_path: Optional[str] = None
    seed: Optional[int] = None
    base: str = ""
    identity: str = ""
    mask_failure: Optional[str] = None  # the `mask` step recorded this photo as failed (its reason): it is skipped


def _read_records(path: str) -> list:
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                records = json.load(fh)
            if isinstance(records, dict) and isinstance(records.get("rows"), list):
                records = records["rows"]
            if not isinstance(records, list):
                raise InputError(f"manifest {path!r} must hold a list of objects with an 'image' entry")
            return records
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            records = list(reader)
            if "image" not in (reader.fieldnames or []):
                raise InputError(f"manifest {path!r} has no 'image' column; its header is {reader.fieldnames}")
            return records
    except (OSError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read manifest {path!r}: {exc}") from exc


def read_input_manifest(path: str) -> list[Item]:
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p):
        p = (p or "").strip()
        return p if not p or os.path.isabs(p) else os.path.join(base, p)

    items = []
    for n, rec in enumerate(_read_records(path), 1):
        if not isinstance(rec, dict) or not rec.get("image"):
            raise InputError(f"manifest {path!r}, entry {n}: no 'image' given")
        prompt = rec.get("prompt")
        seed = rec.get("seed")
        try:
            seed = int(seed) if seed not in (None, "") else None
        except ValueError:
            raise InputError(f"manifest {path!r}, entry {n}: seed {seed!r} is not an integer") from None
        item = Item(
            path=resolve(rec["image"]),
            prompts=[prompt] if isinstance(prompt, str) and prompt.strip() else list(prompt or []) if isinstance(prompt, list) else [],
            negative_prompt=rec.get("negative_prompt") if rec.get("negative_prompt") not in (None, "") else None,
            mask_path=resolve(rec.get("mask")) or None, seed=seed,
        )
        given_id = str(rec.get("id") or "").strip()
        item.base = safe_name(given_id) if given_id else base_name(item.path)
        # a row is its photo plus what it asks for: the same photo with two prompts is two inputs
        item.identity = json.dumps([os.path.normcase(os.path.abspath(item.path)), given_id, item.prompts,
                                    item.negative_prompt, item.mask_path, seed])
        items.append(item)
    return items


def collect_items(inputs: list[str]) -> list[Item]:
    """The photos of ``inputs`` (files, folders, manifests) with their ids; the same input given twice is done once."""
    is_manifest = lambda p: p.lower().endswith(MANIFEST_SUFFIXES)  # noqa: E731
    items: list[Item] = []
    for entry in inputs:
        if os.path.isfile(entry) and is_manifest(entry):
            items += read_input_manifest(entry)
        elif os.path.exists(entry):
            items += [Item(f.path, base=base_name(f.path, f.root), identity=f.identity) for f in find_images([entry])]
        else:
            raise InputError(f"no such image, folder or manifest: {entry!r}")
    if not items:
        raise InputError(f"no images found in {inputs} (looked for {', '.join(IMAGE_SUFFIXES)})")
    ids = assign_ids((item.identity, item.base) for item in items)
    for base, identities in colliding_groups(ids).items():
        log.warning("%d inputs share the name %r; their ids get a suffix (%s)", len(identities), base,
                    ", ".join(sorted(ids[i] for i in identities)))
    unique: dict[str, Item] = {}
    for item in items:
        item.id = ids[item.identity]
        unique.setdefault(item.identity, item)
    return list(unique.values())


def find_mask_file(folder: str, names) -> Optional[str]:
    """``<name>_mask.<ext>`` or ``<name>.<ext>`` in ``folder`` for the first of ``names`` that has one."""
    for stem in [names] if isinstance(names, str) else names:
        for name in (stem + "_mask", stem):  # _mask first: the folder may be the photos' own
            for suffix in IMAGE_SUFFIXES:
                candidate = os.path.join(folder, name + suffix)
                if os.path.isfile(candidate):
                    return candidate
    return None


def read_mask_failures(folder: str) -> dict[str, str]:
    """{photo path (normalised): reason} of the photos the ``mask`` command recorded as failed in ``folder``."""
    from .mask import MANIFEST_JSON
    from ..models.runs.journal import read_merged_manifest

    failed = read_merged_manifest(os.path.join(folder, MANIFEST_JSON)).get("failed", [])
    return {os.path.normcase(os.path.abspath(f["source"])): str(f.get("reason", ""))
            for f in failed if isinstance(f, dict) and f.get("source")}


def prepare_items(items: list[Item], args) -> list[Item]:
    """Give every item its prompts and mask file. A missing prompt or mask source stops the run now; a photo or
    mask that cannot be read, or does not match, fails that item alone when it is loaded
    (:func:`commands.generate_photo.load_photo`); a photo the ``mask`` command recorded as failed in ``--masks``
    fails here with the mask step's reason."""
    mask_failures = read_mask_failures(args.masks) if args.masks else {}
    for item in items:
        if not item.prompts:
            if not args.prompt:
                raise InputError(f"no prompt for {item.path!r}: give --prompt (or a prompt column in the manifest)")
            item.prompts = list(args.prompt)
        if item.mask_path is None and args.masks:
            stem = os.path.splitext(os.path.basename(item.path))[0]
            item.mask_path = find_mask_file(args.masks, dict.fromkeys([item.id, stem]))
            failure = mask_failures.get(os.path.normcase(os.path.abspath(item.path)))
            if item.mask_path is None and failure is not None:
                item.mask_failure = f"its mask failed in the mask step: {failure}"
                continue
            if item.mask_path is None:
                raise InputError(f"no mask for {item.path!r} in {args.masks!r} (expected <name>.png or <name>_mask.png)")
        if item.mask_path is None and not args.salient_checkpoint:
            raise InputError(f"no object mask for {item.path!r}: give --salient-checkpoint, --masks, or a mask column")
    return items
