"""``generate``'s work on one photo: read it (and its mask), frame it and find its object, make its images, write
them and return its record. :class:`PhotoRunner` is what :func:`models.runs.engine.run_items` calls."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .files import save_image_atomically
from .generate_gate import GateRunner, gate_policy, planned_steps
from .generate_inputs import Item
from .generate_manifest import record_image
from .generate_plan import Job, PhotoWork, abs_path

log = logging.getLogger("salient_background")


def output_dirs(out: str) -> dict[str, str]:
    return {k: os.path.join(out, k) for k in ("inputs", "masks", "generated", "restored")}


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
    from ..models.imaging.picture_files import open_picture
    from ..models.runs.engine import ItemFailed

    item = work.item
    photo = open_picture(item.path).convert("RGB")  # as shown (EXIF orientation); unreadable: InputError, per item
    mask = None
    if item.mask_path is not None:
        from ..models.imaging.image_ops import read_mask_file, unit_to_pil_mask

        mask = unit_to_pil_mask(read_mask_file(item.mask_path))
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
        self.dirs = output_dirs(out)
        self.gate = None  # a generate_gate.GateRunner with the quality gate's options

    load = staticmethod(load_photo)

    def failure_record(self, work: PhotoWork, reason: str) -> dict:
        self.progress.advance(planned_steps(len(work.jobs), self.args))  # its steps will not run
        return {"id": work.item.id, "source": abs_path(work.item.path), "failed": reason}

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
        if self.gate is not None:  # each row's candidates, the best kept (one picture per job, as below)
            pictures = self.gate.make(jobs, framed, lambda chunk: _generate_batch(self.pipe, chunk, framed, self.args,
                                                                                  self.progress), failed)
        for start in range(0, len(jobs) if self.gate is None else 0, self.args.batch_size):
            chunk = jobs[start:start + self.args.batch_size]
            pictures.update(zip((j.name for j in chunk), _generate_batch(self.pipe, chunk, framed, self.args,
                                                                          self.progress)))
        return [failed.get(work.item.id) or (framed[work.item.id], photo, [pictures[j.name] for j in work.jobs])
                for work, (photo, _) in ready]

    def save(self, work: PhotoWork, result) -> dict:
        """Write inputs/, masks/, generated/ (and restored/); return the photo's record (its manifest rows)."""
        framed, photo, pictures = result
        # first say which files are being written, with which settings: if the run stops now, a rerun redoes them
        self.journal.write(work.item.id, {"id": work.item.id, "source": abs_path(work.item.path),
                                          "started": {j.tag: j.settings(self.settings) for j in work.jobs},
                                          "rows": work.rows})  # what was true before stays described
        save_image_atomically(framed.picture, framed.input_path)
        save_image_atomically(framed.mask, framed.mask_path)
        rows = {tag: dict(row) for tag, row in work.rows.items()}
        for job, picture in zip(work.jobs if self.gate is None else self.gate.kept_jobs(work), pictures):
            restored = self._write_picture(job, picture, framed, photo)
            record_image(rows, job, self.settings, framed, self.out, restored)
        if self.gate is not None:
            self.gate.annotate(work, rows)
        return {"id": work.item.id, "source": abs_path(work.item.path), "rows": rows}

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


def make_runner(plan, mine: list[PhotoWork], args, out, settings, device, dtype, progress, journal) -> PhotoRunner:
    """Load the models this process needs for its photos (the salient model only when a photo has no mask)."""
    from ..models.generation.loading import pipeline_from_plan

    salient = None
    if args.salient_checkpoint and any(w.item.mask_path is None for w in mine):
        from ..models.networks.salient import load_salient_model

        salient = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device, dtype=dtype)
    pipe = pipeline_from_plan(plan, device=device, dtype=dtype, scheduler=args.scheduler.lower())
    runner = PhotoRunner(args, out, settings, salient, pipe, progress, journal)
    if gate_policy(args) is not None:
        runner.gate = GateRunner(args, out, settings, device, progress)
    return runner
