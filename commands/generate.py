"""``python -m salient_background generate``: new backgrounds for photos with SD2 inpainting + the salient ControlNet.

Inputs: image files, folders (searched recursively) or a manifest (``.csv`` with a header, or ``.json``: a list of
objects) with the column ``image`` and optionally ``prompt``, ``negative_prompt``, ``mask``, ``id``, ``seed``
(relative paths are relative to the manifest's folder).

Per photo, as the reference (yahoo/photo-background-generation) does: letterbox into 512x512 (downscale only, black
padding; ``--upscale`` also enlarges small photos; ``--frame crop`` frames the object with ``--margin`` instead), the
object mask from our salient model on the framed photo (``--salient-checkpoint``) or from a supplied mask
(``--masks DIR`` or the manifest's ``mask`` column; white = object, at the photo's size), then UniPC, 20 steps,
CFG 7.5, ControlNet scale 1.0. ``--controlnet-scale 0`` gives the SI2 baseline (no ControlNet loaded). Nothing is
pasted back unless ``--paste-back``.

Outputs in ``--output-dir``: ``inputs/<id>.png`` (the framed photo), ``masks/<id>.png`` (its object mask, white =
object), ``generated/<id>_s<seed>.png`` (``<id>_p<k>_s<seed>.png`` with several prompts), ``restored/`` (with
``--restore``: the results mapped back to the photo's own size), and ``manifest.csv`` / ``manifest.json``. The CSV has
the columns ``id, mask, generated, original`` that ``python -m salient_background evaluate --manifest`` reads
(``generated`` lists a row's images separated by ``;``). Re-running skips images already made with the same
settings (``--overwrite`` to redo them).

Ids (``<id>`` above) follow :mod:`models.item_ids`: a photo's path below the folder given (``a/x.png`` -> ``a__x``),
the stem of a file given on its own, or the manifest's ``id``; names that two inputs share get a ``+<hash>`` suffix.

Every row of ``manifest.json`` records the settings its images were made with (model files, prompt, negative
prompt, steps, guidance, scheduler, ControlNet scale, size, framing, mask source, paste-back, precision; the seed per
image). A re-run skips an image only when it was made with the same settings; a run with other settings into a
folder that holds images refuses and names the settings that differ (``--overwrite`` redoes the images it makes).
The manifest lists the images in the folder that it can describe: rows of earlier runs stay as they were.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from ..models.errors import InputError
from ..models.runs.item_ids import assign_ids, base_name, colliding_groups, safe_name
from .common import ensure_output_dir
from .files import IMAGE_SUFFIXES, find_images, save_image_atomically, write_atomically, write_json_atomically

log = logging.getLogger("salient_background")

MANIFEST_SUFFIXES = (".csv", ".json")
CSV_FIELDS = ["id", "mask", "generated", "original", "source", "prompt", "negative_prompt", "seeds",
              "controlnet_scale", "restored"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="new text-described backgrounds for photos (SD2 inpainting + salient ControlNet)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders and/or a manifest (.csv/.json)")
    parser.add_argument("--output-dir", required=True, help="where to write images, masks and the manifest")
    parser.add_argument("--prompt", action="append", default=None,
                        help="background description; repeat for several prompts per photo (a manifest's prompt "
                             "column overrides it)")
    parser.add_argument("--negative-prompt", default="", help="negative prompt (default: none, as the reference)")
    models = parser.add_argument_group("models (local files only; nothing is downloaded)")
    models.add_argument("--pipeline", help="folder in the yahoo-inc/photo-background-generation layout "
                                           "(SD2-inpainting subfolders + controlnet/)")
    models.add_argument("--si2", help="SD2 inpainting: the single file ComfyUI uses (512-inpainting-ema.safetensors; its "
                                           "configs come from 'download sd2-configs') or a diffusers folder")
    models.add_argument("--controlnet", help="salient ControlNet: diffusers folder, .safetensors or the released .pth "
                                             "(overrides the pipeline folder's controlnet/)")
    sampling = parser.add_argument_group("sampling (defaults = the paper's)")
    sampling.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet scale (default 1.0; 0 = SI2 baseline)")
    sampling.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    sampling.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    sampling.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, pndm, euler, dpm++ (any case)")
    sampling.add_argument("--seed", type=int, default=0, help="first seed (default 0); output k of a photo uses seed+k")
    sampling.add_argument("--num-images", type=int, default=1, help="images per photo and prompt (default 1)")
    sampling.add_argument("--batch-size", type=int, default=1, help="images generated together (default 1)")
    masks = parser.add_argument_group("object mask (one source)")
    masks.add_argument("--salient-checkpoint", help="InSPyReNet checkpoint (ckpt_base.pth) to find the object")
    masks.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="salient model mode (default base)")
    masks.add_argument("--masks", help="folder of object masks named <id>_mask.png or <id>.png (what `mask --output-dir` "
                                        "writes), or <photo name>_mask.png / <photo name>.png")
    frame = parser.add_argument_group("framing")
    frame.add_argument("--size", type=int, default=512, help="square canvas size (default 512, a multiple of 8)")
    frame.add_argument("--frame", choices=["fit", "crop"], default="fit",
                       help="fit = letterbox the whole photo (the reference); crop = frame the object with --margin")
    frame.add_argument("--margin", type=float, default=0.25, help="crop mode: margin around the object, times its size")
    frame.add_argument("--upscale", action="store_true", help="fit mode: also enlarge photos smaller than the canvas")
    frame.add_argument("--restore", action="store_true", help="also write the results at the photo's own size")
    frame.add_argument("--paste-back", action="store_true", help="composite the original object over the result")
    frame.add_argument("--paste-erode", type=int, default=2, help="paste-back: erode the object mask by N px (default 2)")
    frame.add_argument("--paste-feather", type=int, default=4, help="paste-back: feather the seam over N px (default 4)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto = fp16 on CUDA, fp32 otherwise")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate images that already exist, even when made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- inputs
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


def read_mask_file(path: str):
    """White = object; a picture with alpha uses its alpha. -> PIL 'L' image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                return im.convert("RGBA").getchannel("A")
            return im.convert("L")
    except OSError as exc:
        raise InputError(f"cannot read mask {path!r}: {exc}") from exc


def _picture_size(path: str) -> Optional[tuple[int, int]]:
    """(width, height) from the file's header (cheap: no decoding); None when it is not a readable picture."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- checks before any model
def _validate_options(args) -> None:
    from ..models.generation.pipeline import SCHEDULERS

    if args.size <= 0 or args.size % 8:
        raise InputError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1 or args.num_images < 1 or args.batch_size < 1:
        raise InputError("--steps, --num-images and --batch-size must be at least 1")
    if args.scheduler.lower() not in SCHEDULERS:
        raise InputError(f"unknown --scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not (args.pipeline or args.si2):
        raise InputError("give the models: --pipeline DIR (photo-background-generation layout), or --si2 DIR with --controlnet PATH")
    if args.pipeline and args.si2:
        raise InputError("give either --pipeline or --si2, not both")
    if args.si2 and not args.controlnet and args.controlnet_scale != 0:
        raise InputError("--si2 needs --controlnet PATH (or --controlnet-scale 0 for the SI2 baseline)")
    if args.salient_checkpoint and args.masks:
        raise InputError("give one mask source: --salient-checkpoint or --masks")
    _validate_paths(args)


def _validate_paths(args) -> None:
    """Every file and folder named on the command line exists (what load_pipeline opens, checked up front)."""
    named = [("--pipeline", args.pipeline), ("--si2", args.si2), ("--salient-checkpoint", args.salient_checkpoint),
             ("--masks", args.masks)]
    if args.controlnet_scale != 0:
        named.append(("--controlnet", args.controlnet))
    for option, path in named:
        if path and not os.path.exists(path):
            raise InputError(f"{option} {path!r} does not exist")
    from ..models.generation.pipeline import validate_si2_path

    validate_si2_path(args.pipeline or args.si2)  # folder layout, or a single file with its config (no weights read)
    if args.masks and not os.path.isdir(args.masks):
        raise InputError(f"--masks {args.masks!r} is not a folder")
    if args.salient_checkpoint and not os.path.isfile(args.salient_checkpoint):
        raise InputError(f"--salient-checkpoint {args.salient_checkpoint!r} is not a file")
    if args.pipeline and args.controlnet_scale != 0 and not args.controlnet:
        if not os.path.isdir(os.path.join(args.pipeline, "controlnet")):
            raise InputError(f"--pipeline {args.pipeline!r} has no 'controlnet/' folder: give --controlnet PATH, or "
                             "--controlnet-scale 0 for the SI2 baseline")


def _prepare_items(items: list[Item], args) -> tuple[list[Item], int]:
    """Give every item its prompts and mask file and check them; an unreadable photo is reported and skipped.

    Returns (usable items, number skipped). Only file headers are read."""
    usable, skipped = [], 0
    for item in items:
        if not item.prompts:
            if not args.prompt:
                raise InputError(f"no prompt for {item.path!r}: give --prompt (or a prompt column in the manifest)")
            item.prompts = list(args.prompt)
        if item.mask_path is None and args.masks:
            stem = os.path.splitext(os.path.basename(item.path))[0]
            item.mask_path = find_mask_file(args.masks, dict.fromkeys([item.id, stem]))
            if item.mask_path is None:
                raise InputError(f"no mask for {item.path!r} in {args.masks!r} (expected <name>.png or <name>_mask.png)")
        if item.mask_path is None and not args.salient_checkpoint:
            raise InputError(f"no object mask for {item.path!r}: give --salient-checkpoint, --masks, or a mask column")
        photo_size = _picture_size(item.path)
        if photo_size is None:
            log.error("skipped %s: cannot read it as an image", item.path)
            skipped += 1
            continue
        if item.mask_path is not None:
            mask_size = _picture_size(item.mask_path)
            if mask_size is None:
                raise InputError(f"cannot read mask {item.mask_path!r} as an image")
            if mask_size != photo_size:
                raise InputError(
                    f"mask {item.mask_path!r} is {mask_size[0]}x{mask_size[1]} but photo {item.path!r} is "
                    f"{photo_size[0]}x{photo_size[1]} (WxH); give a mask of the photo itself"
                )
        usable.append(item)
    return usable, skipped


# ---------------------------------------------------------------------------------------------- settings and jobs
# what inputs/<id>.png and masks/<id>.png depend on
PHOTO_KEYS = ("source", "mask_source", "size", "frame", "margin", "upscale")


def _abs(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path else None


def run_settings(args, dtype) -> dict:
    """What changes the pixels of every image of this run; a row adds its photo, mask source, prompt and negative
    prompt (:meth:`Job.settings`), an image its seed."""
    crop = args.frame == "crop"
    return {
        "pipeline": _abs(args.pipeline), "si2": _abs(args.si2),
        "controlnet": _abs(args.controlnet) if args.controlnet_scale != 0 else None,
        "controlnet_scale": args.controlnet_scale, "steps": args.steps, "guidance": args.guidance,
        "scheduler": args.scheduler.lower(), "size": args.size, "frame": args.frame,
        "margin": args.margin if crop else None, "upscale": None if crop else args.upscale,
        "paste_back": args.paste_back, "paste_erode": args.paste_erode if args.paste_back else None,
        "paste_feather": args.paste_feather if args.paste_back else None,
        "precision": str(dtype).replace("torch.", ""),
    }


@dataclass(frozen=True)
class Job:
    """One image to make: photo ``item`` with ``prompt`` and ``seed``, written as ``generated/<name>``."""

    item: Item
    tag: str  # the manifest row's id: the item's id, with _p<k> when photos have several prompts
    prompt: str
    negative_prompt: str
    seed: int
    name: str
    mask_source: str  # the mask file, or the salient model that finds the object

    def settings(self, run: dict) -> dict:
        """What the row of this image records (all but the seed, which is per image)."""
        return {**run, "source": _abs(self.item.path), "mask_source": self.mask_source, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt}


def plan_jobs(items: list[Item], args) -> list[Job]:
    """One job per (photo, prompt, seed), in input order."""
    several_prompts = any(len(item.prompts) > 1 for item in items)
    jobs = []
    for item in items:
        base_seed = args.seed if item.seed is None else item.seed
        negative = item.negative_prompt if item.negative_prompt is not None else args.negative_prompt
        mask_source = _abs(item.mask_path) or f"salient model {_abs(args.salient_checkpoint)} ({args.salient_mode})"
        for k, prompt in enumerate(item.prompts):
            tag = f"{item.id}_p{k}" if several_prompts else item.id
            for n in range(args.num_images):
                seed = base_seed + n
                jobs.append(Job(item, tag, prompt, negative, seed, f"{tag}_s{seed}.png", mask_source))
    return jobs


def _differing(old: dict, new: dict, keys=None) -> list[str]:
    keys = keys if keys is not None else set(old) | set(new)
    return sorted(k for k in keys if old.get(k) != new.get(k))


# ---------------------------------------------------------------------------------------------- the output manifest
def read_rows(out: str) -> dict[str, dict]:
    """The rows of ``out/manifest.json`` that still describe files there, by id (images whose file is gone are dropped;
    rows of an older version, which recorded no per-row settings, are left out: their images count as undescribed)."""
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path!r} ({exc}): choose another --output-dir, or remove that file") from exc
    rows = {}
    exists = lambda rel: bool(rel) and os.path.isfile(os.path.join(out, rel))  # noqa: E731
    for row in data.get("rows", []) if isinstance(data, dict) else []:
        if not (isinstance(row, dict) and isinstance(row.get("settings"), dict) and isinstance(row.get("images"), list)):
            continue
        images = [dict(im, restored=im.get("restored") if exists(im.get("restored")) else "")
                  for im in row["images"] if exists(im.get("generated"))]
        if images:
            rows[row["id"]] = dict(row, images=images)
    return rows


def _csv_row(row: dict) -> dict:
    images = sorted(row["images"], key=lambda im: im["seed"])
    return dict(row, generated=";".join(im["generated"] for im in images),
                seeds=";".join(str(im["seed"]) for im in images),
                restored=";".join(im["restored"] for im in images if im["restored"]))


def write_manifest(out: str, rows: dict[str, dict], run: dict) -> None:
    """``manifest.csv`` (what ``evaluate --manifest`` reads) and ``manifest.json`` (with each row's settings), atomically.

    The JSON's top-level ``settings`` are the run settings when every row shares them, else null and ``mixed_settings``
    names the ones that differ between rows."""
    table = [_csv_row(rows[key]) for key in sorted(rows)]

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table)

    write_atomically(os.path.join(out, "manifest.csv"), write_csv)
    mixed = sorted({k for row in table for k in _differing(row["settings"], run, run.keys())})
    meta = {"settings": None if mixed else run, "rows": table}
    if mixed:
        meta["mixed_settings"] = mixed
    write_json_atomically(os.path.join(out, "manifest.json"), meta)


def _new_row(job: Job, run: dict, framed: "FramedPhoto", out: str) -> dict:
    return {
        "id": job.tag, "mask": os.path.relpath(framed.mask_path, out),
        "original": os.path.relpath(framed.input_path, out),
        "source": _abs(job.item.path), "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "controlnet_scale": run["controlnet_scale"], "frame": framed.transform.to_dict(), "settings": job.settings(run),
        "images": [],
    }


def _record_image(rows: dict, job: Job, run: dict, framed: "FramedPhoto", out: str, restored: str) -> None:
    row = rows.get(job.tag)
    if row is None or row["settings"] != job.settings(run):
        row = rows[job.tag] = _new_row(job, run, framed, out)
    row["frame"] = framed.transform.to_dict()
    row["images"] = [im for im in row["images"] if im["seed"] != job.seed] + [
        {"seed": job.seed, "generated": os.path.join("generated", job.name), "restored": restored}]


# ---------------------------------------------------------------------------------------------- what is left to do
def plan_against_folder(jobs: list[Job], rows: dict[str, dict], run: dict, args, out: str) -> list[Job]:
    """The jobs still to do in ``out``; ``rows`` loses the rows (and images) that this run replaces.

    An image is done when its row has the same settings (and, with --restore, its restored file). Images made with
    other settings, or not described by the manifest, make this an :class:`InputError` naming what differs, unless
    --overwrite."""
    by_tag: dict[str, list[Job]] = {}
    for job in jobs:
        by_tag.setdefault(job.tag, []).append(job)
    differing: dict[str, str] = {}  # setting -> an id whose images have another value
    undescribed: list[str] = []
    todo = []
    for tag, tag_jobs in by_tag.items():
        todo += _todo_for_row(tag_jobs, rows, run, args, out, differing, undescribed)
    _check_other_rows(rows, set(by_tag), todo, run, args, differing)
    if differing and not args.overwrite:
        raise InputError(
            f"{out!r} holds images made with other settings ({', '.join(sorted(differing))}; e.g. "
            f"{differing[min(differing)]!r}): run with the same options, choose another --output-dir, or pass "
            "--overwrite to redo them")
    if undescribed and not args.overwrite:
        raise InputError(
            f"{out!r} holds {len(undescribed)} image(s) this run would write that its manifest.json does not describe "
            f"(e.g. {undescribed[0]!r}): choose another --output-dir, or pass --overwrite to redo them")
    return todo


def _todo_for_row(tag_jobs, rows, run, args, out, differing, undescribed) -> list[Job]:
    tag, settings = tag_jobs[0].tag, tag_jobs[0].settings(run)
    row = rows.get(tag)
    if row is not None and row["settings"] != settings:
        for key in _differing(row["settings"], settings):
            differing.setdefault(key, tag)
        if args.overwrite:
            log.warning("%s: %d earlier image(s) made with other settings are left out of the manifest", tag,
                        len([im for im in row["images"] if im["seed"] not in {j.seed for j in tag_jobs}]))
            del rows[tag]
        row = None
    recorded = {im["seed"]: im for im in row["images"]} if row is not None else {}
    todo = []
    for job in tag_jobs:
        image = recorded.get(job.seed)
        if image is not None and not args.overwrite and (image["restored"] or not args.restore):
            continue
        if image is None and os.path.isfile(os.path.join(out, "generated", job.name)):
            undescribed.append(os.path.join(out, "generated", job.name))
        todo.append(job)
    return todo


def _check_other_rows(rows, planned_tags, todo, run, args, differing) -> None:
    """Rows of earlier runs that this run does not remake: other run settings conflict, and so does a photo whose
    framed input and mask this run rewrites differently (with --overwrite such rows leave the manifest)."""
    rewritten = {os.path.join("masks", job.item.id + ".png"): job.settings(run) for job in todo}
    for tag in [t for t in rows if t not in planned_tags]:
        row = rows[tag]
        keys = _differing(row["settings"], run, run.keys())
        new_photo = rewritten.get(row["mask"])
        if new_photo is not None:
            keys += [k for k in _differing(row["settings"], new_photo, PHOTO_KEYS) if k not in keys]
        for key in keys:
            differing.setdefault(key, tag)
        if new_photo is not None and _differing(row["settings"], new_photo, PHOTO_KEYS) and args.overwrite:
            log.warning("%s: its photo is framed anew; its %d earlier image(s) are left out of the manifest", tag,
                        len(row["images"]))
            del rows[tag]


# ---------------------------------------------------------------------------------------------- framing the photos
@dataclass
class FramedPhoto:
    """A photo on the model's canvas: how it was framed and where its framed picture and object mask are."""

    transform: object  # models.framing.FrameTransform
    input_path: str
    mask_path: str


def _salient_mask(salient, photo):
    """(PIL 'L' object mask, found nothing) from the salient model run on PIL ``photo``."""
    from ..models.imaging import image_ops

    prediction = salient.predict(image_ops.pil_to_image(photo)[0])
    return image_ops.mask_to_pil(prediction.maps[0].float().cpu()), bool(prediction.empty[0])


def frame_photo(item: Item, args, salient, dirs: dict) -> Optional[FramedPhoto]:
    """Frame ``item`` as the reference does and find its object; write inputs/<id>.png and masks/<id>.png.

    None (logged) when the photo cannot be decoded."""
    import numpy as np
    import torch
    from PIL import Image

    from ..models.imaging import framing

    try:
        with Image.open(item.path) as pil:
            pil.load()
            photo = pil.convert("RGB")
    except (OSError, ValueError) as exc:
        log.error("skipped %s: cannot read it as an image (%s)", item.path, exc)
        return None
    source_mask = read_mask_file(item.mask_path) if item.mask_path is not None else None
    as_tensor = lambda m: torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)  # noqa: E731
    if args.frame == framing.CROP and source_mask is None:  # the box comes from the whole photo
        source_mask, _ = _salient_mask(salient, photo)
    transform = framing.choose_transform(
        photo.size[1], photo.size[0], args.frame, args.size, allow_upscale=args.upscale or args.frame == framing.CROP,
        margin=args.margin, object_mask=None if source_mask is None else as_tensor(source_mask))
    framed = framing.apply_pil(photo, transform, fill=0)
    if source_mask is not None:
        framed_mask = framing.apply_pil(source_mask, transform, fill=0)
    else:  # the reference finds the object on the framed photo
        framed_mask, empty = _salient_mask(salient, framed)
        if empty:
            log.warning("%s: the salient model found no object; the whole picture will be generated", item.path)
    warning = framing.small_object_warning(as_tensor(framed_mask))
    if warning:
        log.warning("%s: %s", item.path, warning)
    name = item.id + ".png"
    result = FramedPhoto(transform, os.path.join(dirs["inputs"], name), os.path.join(dirs["masks"], name))
    save_image_atomically(framed, result.input_path)
    save_image_atomically(framed_mask, result.mask_path)
    return result


def frame_photos(items: list[Item], args, device, dtype, dirs: dict) -> dict[str, FramedPhoto]:
    """``{item id: FramedPhoto}`` for the photos that could be read; the salient model is loaded only if needed."""
    import torch

    salient = None
    if args.salient_checkpoint and any(item.mask_path is None for item in items):
        from ..models.networks.salient import load_salient_model

        salient = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device, dtype=dtype)
    framed = {}
    for item in items:
        photo = frame_photo(item, args, salient, dirs)
        if photo is not None:
            framed[item.id] = photo
    if salient is not None:  # free it before the diffusion models load
        del salient
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return framed


# ---------------------------------------------------------------------------------------------- generating
def _generate_batch(pipe, chunk: list[Job], framed: dict[str, FramedPhoto], args, bar):
    """The pictures of ``chunk`` ([B,H,W,3] in [0,1]) from the framed photos and masks written before."""
    import numpy as np
    import torch
    from PIL import Image

    from ..models.imaging import image_ops

    images = torch.cat([image_ops.pil_to_image(Image.open(framed[j.item.id].input_path))[0] for j in chunk])
    object_masks = torch.stack([
        torch.from_numpy(np.asarray(Image.open(framed[j.item.id].mask_path).convert("L"), dtype=np.float32) / 255.0)
        for j in chunk
    ])
    result = pipe(
        images, object_masks, [j.prompt for j in chunk], [j.negative_prompt for j in chunk],
        num_inference_steps=args.steps, guidance_scale=args.guidance, controlnet_conditioning_scale=args.controlnet_scale,
        generator=[torch.Generator().manual_seed(j.seed) for j in chunk],
        output_type="pt", callback=lambda step, total: bar.update(len(chunk)), show_progress=False,
    )
    if not args.paste_back:
        return result.images
    from ..models.imaging.compositing import paste_object_back

    return paste_object_back(result.images, images, object_masks, erode=args.paste_erode, feather=args.paste_feather)


def _write_picture(job: Job, picture, photo: FramedPhoto, args, dirs: dict) -> str:
    """Save generated/<name> (and restored/<name> with --restore); returns the restored path relative to the folder."""
    from PIL import Image

    from ..models.imaging import framing, image_ops

    save_image_atomically(Image.fromarray(image_ops.image_to_uint8(picture)), os.path.join(dirs["generated"], job.name))
    if not args.restore:
        return ""
    with Image.open(job.item.path) as original:
        source = image_ops.pil_to_image(original.convert("RGB"))[0]
    restored = framing.restore(picture[None], photo.transform, original=source)[0]
    save_image_atomically(Image.fromarray(image_ops.image_to_uint8(restored)), os.path.join(dirs["restored"], job.name))
    return os.path.join("restored", job.name)


def generate_all(todo: list[Job], framed: dict[str, FramedPhoto], pipe, args, dirs: dict, on_written) -> None:
    """Run the jobs ``--batch-size`` at a time; ``on_written(job, restored path)`` after each image is saved."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo) * args.steps, unit="step", disable=args.no_progress, desc="generate")
    try:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            pictures = _generate_batch(pipe, chunk, framed, args, bar)
            for job, picture in zip(chunk, pictures):
                on_written(job, _write_picture(job, picture, framed[job.item.id], args, dirs))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- run
def _output_dirs(out: str) -> dict[str, str]:
    return {k: os.path.join(out, k) for k in ("inputs", "masks", "generated", "restored")}


def run(args: argparse.Namespace) -> int:
    from ..models.generation.pipeline import load_pipeline
    from ..models.precision import parse_device, resolve_dtype

    _validate_options(args)
    device = parse_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    items, failures = _prepare_items(collect_items(args.inputs), args)
    out = ensure_output_dir(args.output_dir)
    settings = run_settings(args, dtype)
    jobs = plan_jobs(items, args)
    rows = read_rows(out)
    todo = plan_against_folder(jobs, rows, settings, args, out)
    if not todo:
        print(f"nothing to do: all {len(jobs)} image(s) already generated in {out} (--overwrite to redo)")
        return 1 if failures else 0

    dirs = _output_dirs(out)
    for key, folder in dirs.items():
        if key != "restored" or args.restore:
            os.makedirs(folder, exist_ok=True)
    framed = frame_photos(list({job.item.id: job.item for job in todo}.values()), args, device, dtype, dirs)
    failures += len({job.item.id for job in todo if job.item.id not in framed})
    todo = [job for job in todo if job.item.id in framed]
    if not todo:
        return 1
    pipe = load_pipeline(
        args.pipeline, si2_path=args.si2, controlnet_path=args.controlnet, use_controlnet=args.controlnet_scale != 0,
        device=device, dtype=dtype, scheduler=args.scheduler.lower(),
    )

    def on_written(job: Job, restored: str) -> None:  # the manifest follows every image written
        _record_image(rows, job, settings, framed[job.item.id], out, restored)
        write_manifest(out, rows, settings)

    generate_all(todo, framed, pipe, args, dirs, on_written)
    print(f"wrote {len(todo)} image(s) to {dirs['generated']}; manifest {os.path.join(out, 'manifest.csv')}")
    return 1 if failures else 0
