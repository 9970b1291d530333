"""``generate``'s plan: the settings of a run, one job per image to make, and what is left to do in the output
folder (images made with the same settings are done; other settings are refused unless ``--overwrite``)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..models.errors import InputError
from .generate_inputs import Item

log = logging.getLogger("salient_background")

# what inputs/<id>.png and masks/<id>.png depend on
PHOTO_KEYS = ("source", "mask_source", "size", "frame", "margin", "upscale")


def abs_path(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path else None


def run_settings(args, dtype) -> dict:
    """What changes the pixels of every image of this run; a row adds its photo, mask source, prompt and negative
    prompt (:meth:`Job.settings`), an image its seed."""
    crop = args.frame == "crop"
    return {
        "pipeline": abs_path(args.pipeline), "si2": abs_path(args.base_model),  # "si2": the key earlier manifests hold
        "controlnet": abs_path(args.controlnet) if args.controlnet_scale != 0 else None,
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
        return {**run, "source": abs_path(self.item.path), "mask_source": self.mask_source, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt}


def plan_jobs(items: list[Item], args) -> list[Job]:
    """One job per (photo, prompt, seed), in input order."""
    several_prompts = any(len(item.prompts) > 1 for item in items)
    jobs = []
    for item in items:
        base_seed = args.seed if item.seed is None else item.seed
        negative = item.negative_prompt if item.negative_prompt is not None else args.negative_prompt
        mask_source = abs_path(item.mask_path) or f"salient model {abs_path(args.salient_checkpoint)} ({args.salient_mode})"
        for k, prompt in enumerate(item.prompts):
            tag = f"{item.id}_p{k}" if several_prompts else item.id
            for n in range(args.num_images):
                seed = base_seed + n
                jobs.append(Job(item, tag, prompt, negative, seed, f"{tag}_s{seed}.png", mask_source))
    return jobs


def differing_keys(old: dict, new: dict, keys=None) -> list[str]:
    keys = keys if keys is not None else set(old) | set(new)
    return sorted(k for k in keys if old.get(k) != new.get(k))


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
        for key in differing_keys(row["settings"], settings):
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
        keys = differing_keys(row["settings"], run, run.keys())
        new_photo = rewritten.get(row["mask"])
        if new_photo is not None:
            keys += [k for k in differing_keys(row["settings"], new_photo, PHOTO_KEYS) if k not in keys]
        for key in keys:
            differing.setdefault(key, tag)
        if new_photo is not None and differing_keys(row["settings"], new_photo, PHOTO_KEYS) and args.overwrite:
            log.warning("%s: its photo is framed anew; its %d earlier image(s) are left out of the manifest", tag,
                        len(row["images"]))
            del rows[tag]


@dataclass
class PhotoWork:
    """A photo and the images still to make of it (all its prompts and seeds): done by one process, in one go."""

    item: Item
    jobs: list
    rows: dict  # the manifest rows of its tags before this run (images of other seeds stay in them)

    @property
    def source(self) -> str:
        return self.item.path


def photo_works(todo: list[Job], rows: dict) -> list[PhotoWork]:
    """The photos to work on, each with its jobs (input order) and the current rows of their tags."""
    works: dict[str, PhotoWork] = {}
    for job in todo:
        work = works.setdefault(job.item.id, PhotoWork(job.item, [], {}))
        work.jobs.append(job)
        if job.tag in rows:
            work.rows[job.tag] = rows[job.tag]
    return list(works.values())
