"""``python -m salient_background generate``: new backgrounds for photos with an inpainting model (SD2 -- the
paper's --, SD1.5 or SDXL inpainting) + a salient ControlNet trained on it.

Inputs: image files, folders (searched recursively) or a manifest (``.csv`` with a header, or ``.json``: a list of
objects) with the column ``image`` and optionally ``prompt``, ``negative_prompt``, ``mask``, ``id``, ``seed``
(relative paths are relative to the manifest's folder).

The base is read from the model (``--base-model``: a diffusers folder's ``unet/config.json``, or a single file's
keys); a ControlNet of another base is refused before any weights are loaded. The canvas is the base's native size
(512 for SD2 and SD1.5, 1024 for SDXL) unless ``--size`` says otherwise.

Per photo, as the reference (yahoo/photo-background-generation) does: letterbox into the canvas (downscale only, black
padding; ``--upscale`` also enlarges small photos; ``--frame crop`` frames the object with ``--margin`` instead), the
object mask from our salient model on the framed photo (``--salient-checkpoint``) or from a supplied mask
(``--masks DIR`` or the manifest's ``mask`` column; white = object, at the photo's size), then UniPC, 20 steps,
CFG 7.5, ControlNet scale 1.0. ``--controlnet-scale 0`` gives the inpainting baseline (no ControlNet loaded). Nothing is
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

Large batches: under ``torchrun`` / ``accelerate launch`` the photos are shared between the processes (each photo,
with all its prompts and seeds, by one of them); each finished photo leaves a record in ``.records/generate/``, merged
into the manifest at the end. A photo that cannot be read (or whose mask has another size) is listed under
``failed`` in manifest.json and skipped by a re-run unless ``--retry-failed``. ``--dry-run`` lists what is to do.
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
from .common import add_run_options, check_run_options, ensure_output_dir
from ..models.runs.atomic import write_atomically, write_json_atomically
from ..models.runs.journal import read_merged_manifest
from .files import IMAGE_SUFFIXES, find_images, save_image_atomically

log = logging.getLogger("salient_background")

MANIFEST_SUFFIXES = (".csv", ".json")
CSV_FIELDS = ["id", "mask", "generated", "original", "source", "prompt", "negative_prompt", "seeds",
              "controlnet_scale", "restored"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="new text-described backgrounds for photos (SD2, SD1.5 or SDXL inpainting + salient ControlNet)",
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
    models.add_argument("--base-model", "--si2", dest="si2", metavar="PATH",
                        help="the inpainting model, its base read from it: a diffusers folder of SD2, SD1.5 or SDXL "
                             "inpainting, or SD2's single file ComfyUI uses (512-inpainting-ema.safetensors; its "
                             "configs come from 'download sd2-configs'). --si2 is the former name")
    models.add_argument("--controlnet", help="salient ControlNet: diffusers folder, .safetensors or the released .pth "
                                             "(overrides the pipeline folder's controlnet/)")
    sampling = parser.add_argument_group("sampling (defaults = the paper's)")
    sampling.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet scale (default 1.0; 0 = SI2 baseline)")
    sampling.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    sampling.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    sampling.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, pndm, euler, dpm++ (any case)")
    sampling.add_argument("--seed", type=int, default=0, help="first seed (default 0); output k of a photo uses seed+k")
    sampling.add_argument("--num-images", type=int, default=1, help="images per photo and prompt (default 1)")
    masks = parser.add_argument_group("object mask (one source)")
    masks.add_argument("--salient-checkpoint", help="InSPyReNet checkpoint (ckpt_base.pth) to find the object")
    masks.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="salient model mode (default base)")
    masks.add_argument("--masks", help="folder of object masks named <id>_mask.png or <id>.png (what `mask --output-dir` "
                                        "writes), or <photo name>_mask.png / <photo name>.png")
    frame = parser.add_argument_group("framing")
    frame.add_argument("--size", type=int, default=None,
                       help="square canvas size, a multiple of 8 (default: the base's, 512 for SD2/SD1.5, 1024 for SDXL)")
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
    add_run_options(parser)
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


# ---------------------------------------------------------------------------------------------- checks before any model
def _validate_options(args) -> None:
    from ..models.generation.pipeline import SCHEDULERS

    check_run_options(args)
    if args.size is not None and (args.size <= 0 or args.size % 8):
        raise InputError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1 or args.num_images < 1 or args.batch_size < 1:
        raise InputError("--steps, --num-images and --batch-size must be at least 1")
    if args.scheduler.lower() not in SCHEDULERS:
        raise InputError(f"unknown --scheduler {args.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not (args.pipeline or args.si2):
        raise InputError("give the models: --pipeline DIR (photo-background-generation layout), or --base-model PATH "
                         "with --controlnet PATH")
    if args.pipeline and args.si2:
        raise InputError("give either --pipeline or --base-model (--si2), not both")
    if args.si2 and not args.controlnet and args.controlnet_scale != 0:
        raise InputError("--base-model needs --controlnet PATH (or --controlnet-scale 0 for the inpainting baseline)")
    if args.salient_checkpoint and args.masks:
        raise InputError("give one mask source: --salient-checkpoint or --masks")
    _validate_paths(args)


def _validate_paths(args) -> None:
    """Every file and folder named on the command line exists (what load_pipeline opens, checked up front)."""
    named = [("--pipeline", args.pipeline), ("--base-model/--si2", args.si2), ("--salient-checkpoint", args.salient_checkpoint),
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
    _pick_base(args)


def _pick_base(args) -> None:
    """The base of the model (read from it, no weights loaded): the canvas defaults to its native size, and a
    ControlNet of another base stops the run now (one error naming both bases)."""
    from ..models.generation.base_model import base_of_model, check_controlnet_fits

    base = base_of_model(args.pipeline or args.si2)
    if args.size is None:
        args.size = base.resolution
    if args.controlnet_scale != 0:
        check_controlnet_fits(base, args.controlnet or os.path.join(args.pipeline, "controlnet"))


def _prepare_items(items: list[Item], args) -> list[Item]:
    """Give every item its prompts and mask file. A missing prompt or mask source stops the run now; a photo or
    mask that cannot be read, or does not match, fails that item alone when it is loaded (:func:`load_photo`)."""
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
    return items


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
@dataclass
class FolderState:
    """What ``out`` holds: manifest rows (by id) and photos that failed (by photo id), the manifest's and those of
    records a run did not merge yet (it was stopped); ``pending`` are those records."""

    rows: dict
    failed: dict
    pending: dict
    started: dict = field(default_factory=dict)  # tag -> settings, of photos a stopped run was writing


def read_state(out: str, journal) -> FolderState:
    """The rows of ``out/manifest.json`` and of unmerged records that still describe files there, by id (images whose
    file is gone are dropped; rows of an older version, which recorded no per-row settings, are left out: their
    images count as undescribed), and the failed photos."""
    path = os.path.join(out, "manifest.json")
    data = read_merged_manifest(path)
    raw = {row.get("id"): row for row in data.get("rows", []) if isinstance(row, dict)}
    failed = {f["id"]: f for f in data.get("failed", []) if isinstance(f, dict) and "id" in f}
    pending = journal.pending()
    started = _fold_records(raw, failed, pending)
    rows = {}
    exists = lambda rel: bool(rel) and os.path.isfile(os.path.join(out, rel))  # noqa: E731
    for tag, row in raw.items():
        if not (isinstance(row.get("settings"), dict) and isinstance(row.get("images"), list)):
            continue
        images = [dict(im, restored=im.get("restored") if exists(im.get("restored")) else "")
                  for im in row["images"] if exists(im.get("generated"))]
        if images:
            rows[tag] = dict(row, images=images)
    return FolderState(rows, failed, pending, started)


def _fold_records(rows: dict, failed: dict, records: dict) -> dict:
    """Add per-photo records to manifest rows and failures (a photo done now is no longer failed); returns the
    settings of the rows whose photo was being written when its run stopped (tag -> settings)."""
    started = {}
    for _, record in sorted(records.items()):
        if "started" in record:
            started.update(record["started"])
            rows.update(record["rows"])
        elif "failed" in record:
            failed[record["id"]] = {"id": record["id"], "source": record["source"], "reason": record["failed"]}
        else:
            failed.pop(record["id"], None)
            rows.update(record["rows"])
    return started


def _csv_row(row: dict) -> dict:
    images = sorted(row["images"], key=lambda im: im["seed"])
    return dict(row, generated=";".join(im["generated"] for im in images),
                seeds=";".join(str(im["seed"]) for im in images),
                restored=";".join(im["restored"] for im in images if im["restored"]))


def write_manifest(out: str, rows: dict[str, dict], run: dict, failed: Optional[dict] = None) -> None:
    """``manifest.csv`` (what ``evaluate --manifest`` reads) and ``manifest.json`` (with each row's settings, and the
    photos that failed with the reason), atomically, sorted by id.

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
    if failed:
        meta["failed"] = [failed[key] for key in sorted(failed)]
    write_json_atomically(os.path.join(out, "manifest.json"), meta)


def _new_row(job: Job, run: dict, framed: "FramedPhoto", out: str) -> dict:
    row = {
        "id": job.tag, "mask": os.path.relpath(framed.mask_path, out),
        "original": os.path.relpath(framed.input_path, out),
        "source": _abs(job.item.path), "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "controlnet_scale": run["controlnet_scale"], "frame": framed.transform.to_dict(), "settings": job.settings(run),
        "images": [],
    }
    if framed.note:
        row["note"] = framed.note
    return row


def _record_image(rows: dict, job: Job, run: dict, framed: "FramedPhoto", out: str, restored: str) -> None:
    row = rows.get(job.tag)
    if row is None or row["settings"] != job.settings(run):
        row = rows[job.tag] = _new_row(job, run, framed, out)
    row["frame"] = framed.transform.to_dict()
    row["images"] = sorted([im for im in row["images"] if im["seed"] != job.seed] + [
        {"seed": job.seed, "generated": os.path.join("generated", job.name), "restored": restored}],
        key=lambda im: im["seed"])


# ---------------------------------------------------------------------------------------------- what is left to do
def plan_against_folder(jobs: list[Job], rows: dict[str, dict], run: dict, args, out: str,
                        started: Optional[dict] = None) -> list[Job]:
    """The jobs still to do in ``out``; ``rows`` loses the rows (and images) that this run replaces.

    An image is done when its row has the same settings (and, with --restore, its restored file). Images made with
    other settings, or not described by the manifest, make this an :class:`InputError` naming what differs, unless
    --overwrite. ``started`` (tag -> settings) names the rows a stopped run was writing: their files are redone."""
    by_tag: dict[str, list[Job]] = {}
    for job in jobs:
        by_tag.setdefault(job.tag, []).append(job)
    differing: dict[str, str] = {}  # setting -> an id whose images have another value
    undescribed: list[str] = []
    todo = []
    for tag, tag_jobs in by_tag.items():
        ours = (started or {}).get(tag) == tag_jobs[0].settings(run)
        todo += _todo_for_row(tag_jobs, rows, run, args, out, differing, [] if ours else undescribed)
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


# ---------------------------------------------------------------------------------------------- one photo's work
@dataclass
class PhotoWork:
    """A photo and the images still to make of it (all its prompts and seeds): done by one process, in one go."""

    item: Item
    jobs: list
    rows: dict  # the manifest rows of its tags before this run (images of other seeds stay in them)

    @property
    def source(self) -> str:
        return self.item.path


@dataclass
class FramedPhoto:
    """A photo on the model's canvas: how it was framed, the framed picture and object mask and where they go."""

    transform: object  # models.framing.FrameTransform
    input_path: str
    mask_path: str
    picture: object = None  # PIL RGB
    mask: object = None  # PIL L, white = object
    note: str = ""


def load_photo(work: PhotoWork):
    """(photo, supplied mask or None), PIL; the item fails when either cannot be read or they differ in size."""
    from PIL import Image

    from ..models.runs.engine import ItemFailed

    item = work.item
    try:
        with Image.open(item.path) as pil:
            pil.load()
            photo = pil.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ItemFailed(f"cannot read it as an image ({exc})") from None
    mask = read_mask_file(item.mask_path) if item.mask_path is not None else None
    if mask is not None and mask.size != photo.size:
        raise ItemFailed(f"mask {item.mask_path!r} is {mask.size[0]}x{mask.size[1]} but the photo is "
                         f"{photo.size[0]}x{photo.size[1]} (WxH); give a mask of the photo itself")
    return photo, mask


def _salient_mask(salient, photo):
    """(PIL 'L' object mask, found nothing) from the salient model run on PIL ``photo``."""
    from ..models.imaging import image_ops

    prediction = salient.predict(image_ops.pil_to_image(photo)[0])
    return image_ops.mask_to_pil(prediction.maps[0].float().cpu()), bool(prediction.empty[0])


NO_OBJECT_NOTE = "the salient model found no object; the whole picture was generated"


def frame_photo(item: Item, photo, source_mask, args, salient, dirs: dict) -> FramedPhoto:
    """Frame ``photo`` as the reference does and find its object (nothing is written here)."""
    import numpy as np
    import torch

    from ..models.imaging import framing

    as_tensor = lambda m: torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)  # noqa: E731
    if args.frame == framing.CROP and source_mask is None:  # the box comes from the whole photo
        source_mask, _ = _salient_mask(salient, photo)
    transform = framing.choose_transform(
        photo.size[1], photo.size[0], args.frame, args.size, allow_upscale=args.upscale or args.frame == framing.CROP,
        margin=args.margin, object_mask=None if source_mask is None else as_tensor(source_mask))
    framed = framing.apply_pil(photo, transform, fill=0)
    note = ""
    if source_mask is not None:
        framed_mask = framing.apply_pil(source_mask, transform, fill=0)
    else:  # the reference finds the object on the framed photo
        framed_mask, empty = _salient_mask(salient, framed)
        if empty:
            note = NO_OBJECT_NOTE
            log.warning("%s: the salient model found no object; the whole picture will be generated", item.path)
    warning = framing.small_object_warning(as_tensor(framed_mask))
    if warning:
        log.warning("%s: %s", item.path, warning)
    name = item.id + ".png"
    return FramedPhoto(transform, os.path.join(dirs["inputs"], name), os.path.join(dirs["masks"], name),
                       framed, framed_mask, note)


# ---------------------------------------------------------------------------------------------- generating
def _generate_batch(pipe, chunk: list[Job], framed: dict[str, FramedPhoto], args, progress):
    """The pictures of ``chunk`` ([B,H,W,3] in [0,1]) from the framed photos and masks."""
    import numpy as np
    import torch

    from ..models.imaging import image_ops

    images = torch.cat([image_ops.pil_to_image(framed[j.item.id].picture)[0] for j in chunk])
    object_masks = torch.stack([
        torch.from_numpy(np.asarray(framed[j.item.id].mask, dtype=np.float32) / 255.0) for j in chunk])
    result = pipe(
        images, object_masks, [j.prompt for j in chunk], [j.negative_prompt for j in chunk],
        num_inference_steps=args.steps, guidance_scale=args.guidance, controlnet_conditioning_scale=args.controlnet_scale,
        generator=[torch.Generator().manual_seed(j.seed) for j in chunk],
        output_type="pt", callback=lambda step, total: progress.advance(len(chunk)), show_progress=False,
    )
    if not args.paste_back:
        return result.images
    from ..models.imaging.compositing import paste_object_back

    return paste_object_back(result.images, images, object_masks, erode=args.paste_erode, feather=args.paste_feather)


class PhotoRunner:
    """The three steps :func:`models.runs.engine.run_items` calls per photo: load (files), compute (models), save."""

    def __init__(self, args, out: str, settings: dict, salient, pipe, progress, journal):
        self.args, self.out, self.settings, self.journal = args, out, settings, journal
        self.salient, self.pipe, self.progress = salient, pipe, progress
        self.dirs = _output_dirs(out)

    load = staticmethod(load_photo)

    def failure_record(self, work: PhotoWork, reason: str) -> dict:
        self.progress.advance(len(work.jobs) * self.args.steps)  # its steps will not run
        return {"id": work.item.id, "source": _abs(work.item.path), "failed": reason}

    def compute(self, ready: list) -> list:
        """Frame each photo, then make all their images ``--batch-size`` at a time."""
        from ..models.runs.engine import ITEM_ERRORS, ItemFailed, failure_reason

        framed: dict[str, FramedPhoto] = {}
        failed: dict[str, ItemFailed] = {}
        for work, (photo, mask) in ready:
            try:
                framed[work.item.id] = frame_photo(work.item, photo, mask, self.args, self.salient, self.dirs)
            except ITEM_ERRORS as exc:
                failed[work.item.id] = ItemFailed(failure_reason(exc))
        jobs = [job for work, _ in ready if work.item.id in framed for job in work.jobs]
        pictures = {}
        for start in range(0, len(jobs), self.args.batch_size):
            chunk = jobs[start:start + self.args.batch_size]
            pictures.update(zip((j.name for j in chunk), _generate_batch(self.pipe, chunk, framed, self.args,
                                                                          self.progress)))
        return [failed.get(work.item.id) or (framed[work.item.id], photo, [pictures[j.name] for j in work.jobs])
                for work, (photo, _) in ready]

    def save(self, work: PhotoWork, result) -> dict:
        """Write inputs/, masks/, generated/ (and restored/); return the photo's record (its manifest rows)."""
        framed, photo, pictures = result
        # first say which files are being written, with which settings: if the run stops now, a rerun redoes them
        self.journal.write(work.item.id, {"id": work.item.id, "source": _abs(work.item.path),
                                          "started": {j.tag: j.settings(self.settings) for j in work.jobs},
                                          "rows": work.rows})  # what was true before stays described
        save_image_atomically(framed.picture, framed.input_path)
        save_image_atomically(framed.mask, framed.mask_path)
        rows = {tag: dict(row) for tag, row in work.rows.items()}
        for job, picture in zip(work.jobs, pictures):
            restored = self._write_picture(job, picture, framed, photo)
            _record_image(rows, job, self.settings, framed, self.out, restored)
        return {"id": work.item.id, "source": _abs(work.item.path), "rows": rows}

    def _write_picture(self, job: Job, picture, framed: FramedPhoto, photo) -> str:
        """Save generated/<name> (and restored/<name> with --restore); the restored path relative to the folder."""
        from PIL import Image

        from ..models.imaging import framing, image_ops

        save_image_atomically(Image.fromarray(image_ops.image_to_uint8(picture)),
                              os.path.join(self.dirs["generated"], job.name))
        if not self.args.restore:
            return ""
        source = image_ops.pil_to_image(photo)[0]
        restored = framing.restore(picture[None], framed.transform, original=source)[0]
        save_image_atomically(Image.fromarray(image_ops.image_to_uint8(restored)),
                              os.path.join(self.dirs["restored"], job.name))
        return os.path.join("restored", job.name)


# ---------------------------------------------------------------------------------------------- run
def _output_dirs(out: str) -> dict[str, str]:
    return {k: os.path.join(out, k) for k in ("inputs", "masks", "generated", "restored")}


def _works(todo: list[Job], rows: dict) -> list[PhotoWork]:
    """The photos to work on, each with its jobs (input order) and the current rows of their tags."""
    works: dict[str, PhotoWork] = {}
    for job in todo:
        work = works.setdefault(job.item.id, PhotoWork(job.item, [], {}))
        work.jobs.append(job)
        if job.tag in rows:
            work.rows[job.tag] = rows[job.tag]
    return list(works.values())


def run(args: argparse.Namespace) -> int:
    from ..models.runs.ranks import join_ranks

    _validate_options(args)
    with join_ranks() as ranks:
        return _run(args, ranks)


def _run(args: argparse.Namespace, ranks) -> int:
    from ..models.precision import parse_device, resolve_dtype
    from ..models.runs.journal import Journal
    from ..models.runs.ranks import device_name
    from .common import report_failures, run_shared_part

    device = parse_device(device_name(args.device, ranks))
    dtype = resolve_dtype(args.precision, device)
    items = _prepare_items(collect_items(args.inputs), args)
    out = ensure_output_dir(args.output_dir)
    settings = run_settings(args, dtype)
    jobs = plan_jobs(items, args)
    journal = Journal(out, "generate")
    state = read_state(out, journal)
    todo = plan_against_folder(jobs, state.rows, settings, args, out, state.started)
    skipped_failed = sorted({j.item.id for j in todo if j.item.id in state.failed and not args.retry_failed})
    todo = [job for job in todo if job.item.id not in skipped_failed]
    done = len(jobs) - len(todo) - sum(1 for j in jobs if j.item.id in skipped_failed)  # images already there
    works = _works(todo, state.rows)
    if args.dry_run:
        return _dry_run(ranks, items, works, state, skipped_failed)
    if not works:
        ranks.barrier()  # every process has read the records before the main process merges them
        if ranks.is_main:
            _merge(out, journal, state, settings)
            print(f"nothing to do: all {done} image(s) already generated in {out} (--overwrite to redo)")
            report_failures("generate", state.failed, skipped_failed)
        return 1 if skipped_failed or state.failed else 0
    for key, folder in _output_dirs(out).items():
        if key != "restored" or args.restore:
            os.makedirs(folder, exist_ok=True)
    run_shared_part(
        ranks, journal, works, key=lambda w: w.item.id, total=len(todo) * args.steps, unit="step", desc="generate",
        args=args, make_runner=lambda mine, progress: _runner(mine, args, out, settings, device, dtype, progress, journal))
    if not ranks.is_main:
        return 0
    failed_now = [r["id"] for r in journal.pending().values() if "failed" in r]
    merged = _merge(out, journal, state, settings)
    written = sum(len(w.jobs) for w in works if w.item.id not in failed_now)
    print(f"generate: {written} image(s) of {len(works) - len(failed_now)} photo(s) written to "
          f"{os.path.join(out, 'generated')}, {done} already done; manifest "
          f"{os.path.join(out, 'manifest.csv')}")
    report_failures("generate", merged.failed, skipped_failed)
    return 1 if merged.failed else 0


def _runner(mine: list[PhotoWork], args, out, settings, device, dtype, progress, journal) -> PhotoRunner:
    """Load the models this process needs for its photos (the salient model only when a photo has no mask)."""
    from ..models.generation.pipeline import load_pipeline

    salient = None
    if args.salient_checkpoint and any(w.item.mask_path is None for w in mine):
        from ..models.networks.salient import load_salient_model

        salient = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device, dtype=dtype)
    pipe = load_pipeline(
        args.pipeline, si2_path=args.si2, controlnet_path=args.controlnet, use_controlnet=args.controlnet_scale != 0,
        device=device, dtype=dtype, scheduler=args.scheduler.lower(),
    )
    return PhotoRunner(args, out, settings, salient, pipe, progress, journal)


def _merge(out: str, journal, state: FolderState, settings: dict) -> FolderState:
    """The main process, once every process is done: fold the new records into the manifest, then drop them."""
    records = journal.pending()
    rows, failed = dict(state.rows), dict(state.failed)
    _fold_records(rows, failed, records)
    if records or not os.path.isfile(os.path.join(out, "manifest.json")) or rows != state.rows:
        write_manifest(out, rows, settings, failed)
    journal.consume(records)
    return FolderState(rows, failed, {})


def _dry_run(ranks, items: list[Item], works: list[PhotoWork], state: FolderState, skipped_failed: list) -> int:
    """List every photo and what this run would do with it; no model is loaded, nothing is written."""
    if not ranks.is_main:
        return 0
    planned = {w.item.id: w for w in works}
    for item in sorted(items, key=lambda i: i.id):
        if item.id in planned:
            status = f"to do: {len(planned[item.id].jobs)} image(s)"
        elif item.id in skipped_failed:
            status = f"failed before, skipped (--retry-failed): {state.failed[item.id]['reason']}"
        else:
            status = "done"
        print(f"{item.id}\t{item.path}\t{status}")
    images = sum(len(w.jobs) for w in works)
    print(f"dry run: {len(items)} photo(s); {len(works)} to do ({images} image(s)), "
          f"{len(items) - len(works) - len(skipped_failed)} done, {len(skipped_failed)} failed before (skipped)")
    return 0
