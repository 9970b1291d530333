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
(``generated`` lists a row's images separated by ``;``). Re-running skips images already written (``--overwrite`` to
redo them).
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

log = logging.getLogger("salient_background")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
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
    models.add_argument("--si2", help="SD2-inpainting diffusers folder (stabilityai/stable-diffusion-2-inpainting)")
    models.add_argument("--controlnet", help="salient ControlNet: diffusers folder, .safetensors or the released .pth "
                                             "(overrides the pipeline folder's controlnet/)")
    sampling = parser.add_argument_group("sampling (defaults = the paper's)")
    sampling.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet scale (default 1.0; 0 = SI2 baseline)")
    sampling.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    sampling.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    sampling.add_argument("--scheduler", default="unipc", help="unipc (default), ddim, pndm, euler, dpm++")
    sampling.add_argument("--seed", type=int, default=0, help="first seed (default 0); output k of a photo uses seed+k")
    sampling.add_argument("--num-images", type=int, default=1, help="images per photo and prompt (default 1)")
    sampling.add_argument("--batch-size", type=int, default=1, help="images generated together (default 1)")
    masks = parser.add_argument_group("object mask (one source)")
    masks.add_argument("--salient-checkpoint", help="InSPyReNet checkpoint (ckpt_base.pth) to find the object")
    masks.add_argument("--salient-mode", choices=["base", "fast"], default="base", help="salient model mode (default base)")
    masks.add_argument("--masks", help="folder of object masks named <photo name>.png or <photo name>_mask.png")
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
    parser.add_argument("--overwrite", action="store_true", help="regenerate images that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Item:
    path: str
    id: str = ""
    prompts: list = field(default_factory=list)
    negative_prompt: Optional[str] = None
    mask_path: Optional[str] = None
    seed: Optional[int] = None


def _list_images(folder: str) -> list[str]:
    found = []
    for root, _, files in sorted(os.walk(folder)):
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    return [f for f in found if not f.endswith(("_mask.png", "_cutout.png"))]


def read_input_manifest(path: str) -> list[Item]:
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p):
        p = (p or "").strip()
        return p if not p or os.path.isabs(p) else os.path.join(base, p)

    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                records = json.load(fh)
            if isinstance(records, dict) and isinstance(records.get("rows"), list):
                records = records["rows"]
            if not isinstance(records, list):
                raise InputError(f"manifest {path!r} must hold a list of objects with an 'image' entry")
        else:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                records = list(reader)
                if "image" not in (reader.fieldnames or []):
                    raise InputError(f"manifest {path!r} has no 'image' column; its header is {reader.fieldnames}")
    except (OSError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read manifest {path!r}: {exc}") from exc
    items = []
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not rec.get("image"):
            raise InputError(f"manifest {path!r}, entry {n}: no 'image' given")
        prompt = rec.get("prompt")
        seed = rec.get("seed")
        try:
            seed = int(seed) if seed not in (None, "") else None
        except ValueError:
            raise InputError(f"manifest {path!r}, entry {n}: seed {seed!r} is not an integer") from None
        items.append(Item(
            path=resolve(rec["image"]), id=str(rec.get("id") or "").strip(),
            prompts=[prompt] if isinstance(prompt, str) and prompt.strip() else list(prompt or []) if isinstance(prompt, list) else [],
            negative_prompt=rec.get("negative_prompt") if rec.get("negative_prompt") not in (None, "") else None,
            mask_path=resolve(rec.get("mask")) or None, seed=seed,
        ))
    return items


def collect_items(inputs: list[str]) -> list[Item]:
    items: list[Item] = []
    for entry in inputs:
        if os.path.isdir(entry):
            items += [Item(p) for p in _list_images(entry)]
        elif os.path.isfile(entry) and entry.lower().endswith(MANIFEST_SUFFIXES):
            items += read_input_manifest(entry)
        elif os.path.isfile(entry):
            items.append(Item(entry))
        else:
            raise InputError(f"no such image, folder or manifest: {entry!r}")
    if not items:
        raise InputError(f"no images found in {inputs} (looked for {', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, int] = {}
    for item in items:  # unique, file-name-safe ids
        stem = item.id or os.path.splitext(os.path.basename(item.path))[0]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        item.id = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
    return items


def find_mask_file(folder: str, stem: str) -> Optional[str]:
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


# ---------------------------------------------------------------------------------------------- run
def _settings(args) -> dict:
    keys = ["controlnet_scale", "steps", "guidance", "scheduler", "seed", "num_images", "negative_prompt", "size",
            "frame", "margin", "upscale", "paste_back", "paste_erode", "paste_feather", "pipeline", "si2", "controlnet",
            "salient_checkpoint", "salient_mode", "masks"]
    return {k: getattr(args, k) for k in keys}


def _validate(args) -> None:
    if args.size <= 0 or args.size % 8:
        raise InputError(f"--size must be a positive multiple of 8, got {args.size}")
    if args.steps < 1 or args.num_images < 1 or args.batch_size < 1:
        raise InputError("--steps, --num-images and --batch-size must be at least 1")
    if not (args.pipeline or args.si2):
        raise InputError("give the models: --pipeline DIR (photo-background-generation layout), or --si2 DIR with --controlnet PATH")
    if args.pipeline and args.si2:
        raise InputError("give either --pipeline or --si2, not both")
    if args.si2 and not args.controlnet and args.controlnet_scale != 0:
        raise InputError("--si2 needs --controlnet PATH (or --controlnet-scale 0 for the SI2 baseline)")
    if args.salient_checkpoint and args.masks:
        raise InputError("give one mask source: --salient-checkpoint or --masks")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..models import framing, image_ops
    from ..models.pipeline import load_pipeline
    from ..models.precision import default_device, resolve_dtype

    _validate(args)
    items = collect_items(args.inputs)
    for item in items:
        if not item.prompts:
            if not args.prompt:
                raise InputError(f"no prompt for {item.path!r}: give --prompt (or a prompt column in the manifest)")
            item.prompts = list(args.prompt)
        if item.mask_path is None and args.masks:
            item.mask_path = find_mask_file(args.masks, os.path.splitext(os.path.basename(item.path))[0])
            if item.mask_path is None:
                raise InputError(f"no mask for {item.path!r} in {args.masks!r} (expected <name>.png or <name>_mask.png)")
        if item.mask_path is None and not args.salient_checkpoint:
            raise InputError(f"no object mask for {item.path!r}: give --salient-checkpoint, --masks, or a mask column")

    out = os.path.abspath(args.output_dir)
    dirs = {k: os.path.join(out, k) for k in ("inputs", "masks", "generated", "restored")}
    for k, d in dirs.items():
        if k != "restored" or args.restore:
            os.makedirs(d, exist_ok=True)
    device = torch.device(args.device) if args.device else default_device()
    dtype = resolve_dtype(args.precision, device)

    salient = None
    if args.salient_checkpoint and any(item.mask_path is None for item in items):
        from ..models.salient import load_salient_model

        salient = load_salient_model(args.salient_checkpoint, mode=args.salient_mode, device=device, dtype=dtype)

    # 1. frame every photo and find its object mask --------------------------------------------------------------
    prepared = []
    failures = 0
    for item in items:
        try:
            with Image.open(item.path) as pil:
                pil.load()
                photo = pil.convert("RGB")
        except (OSError, ValueError) as exc:
            log.error("skipped %s: cannot read it as an image (%s)", item.path, exc)
            failures += 1
            continue
        w, h = photo.size
        source_mask = None
        if item.mask_path is not None:
            source_mask = read_mask_file(item.mask_path)
            if source_mask.size != photo.size:
                raise InputError(
                    f"mask {item.mask_path!r} is {source_mask.size[0]}x{source_mask.size[1]} but photo {item.path!r} is "
                    f"{w}x{h} (WxH); give a mask of the photo itself"
                )
        if args.frame == "crop":
            if source_mask is None:
                source_mask = image_ops.mask_to_pil(salient.predict(image_ops.pil_to_image(photo)[0]).maps[0].float().cpu())
            mask_t = torch.from_numpy(np.asarray(source_mask, dtype=np.float32) / 255.0)
            transform = framing.crop_transform(mask_t, margin=args.margin, target=args.size, allow_upscale=True)
        else:
            transform = framing.fit_transform(h, w, args.size, allow_upscale=args.upscale)
        framed = framing.apply_pil(photo, transform, fill=0)
        if source_mask is not None:
            framed_mask = framing.apply_pil(source_mask, transform, fill=0)
        else:  # the reference finds the object on the framed photo
            prediction = salient.predict(image_ops.pil_to_image(framed)[0])
            framed_mask = image_ops.mask_to_pil(prediction.maps[0].float().cpu())
            if prediction.empty[0]:
                log.warning("%s: the salient model found no object; the whole picture will be generated", item.path)
        original_path = os.path.join(dirs["inputs"], item.id + ".png")
        mask_path = os.path.join(dirs["masks"], item.id + ".png")
        framed.save(original_path)
        framed_mask.save(mask_path)
        prepared.append((item, transform, original_path, mask_path))
    if salient is not None:  # free it before the diffusion models load
        del salient
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # 2. jobs: one per (photo, prompt, seed) ----------------------------------------------------------------------
    several_prompts = any(len(item.prompts) > 1 for item, *_ in prepared)
    jobs, rows = [], []
    for item, transform, original_path, mask_path in prepared:
        base_seed = args.seed if item.seed is None else item.seed
        for k, prompt in enumerate(item.prompts):
            seeds = [base_seed + n for n in range(args.num_images)]
            tag = f"{item.id}_p{k}" if several_prompts else item.id
            names = [f"{tag}_s{s}.png" for s in seeds]
            row = {
                "id": tag, "mask": os.path.relpath(mask_path, out), "original": os.path.relpath(original_path, out),
                "generated": ";".join(os.path.join("generated", n) for n in names), "source": os.path.abspath(item.path),
                "prompt": prompt, "negative_prompt": item.negative_prompt if item.negative_prompt is not None else args.negative_prompt,
                "seeds": ";".join(map(str, seeds)), "controlnet_scale": args.controlnet_scale,
                "restored": ";".join(os.path.join("restored", n) for n in names) if args.restore else "",
                "frame": transform.to_dict(),
            }
            rows.append(row)
            for seed, name in zip(seeds, names):
                target = os.path.join(dirs["generated"], name)
                if os.path.isfile(target) and not args.overwrite:
                    continue
                jobs.append((row, item, transform, original_path, mask_path, seed, name))

    def write_manifest():
        with open(os.path.join(out, "manifest.csv"), "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump({"settings": _settings(args), "rows": rows}, fh, indent=2)

    write_manifest()
    if not jobs:
        print(f"nothing to do: all {len(rows)} row(s) already generated in {out} (--overwrite to redo)")
        return 1 if failures else 0

    # 3. generate -------------------------------------------------------------------------------------------------
    use_controlnet = args.controlnet_scale != 0
    pipe = load_pipeline(
        args.pipeline, si2_path=args.si2, controlnet_path=args.controlnet, use_controlnet=use_controlnet,
        device=device, dtype=dtype, scheduler=args.scheduler,
    )
    bar = tqdm(total=len(jobs) * args.steps, unit="step", disable=args.no_progress, desc="generate")
    try:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            images = torch.cat([image_ops.pil_to_image(Image.open(j[3]))[0] for j in chunk])  # what step 1 wrote
            object_masks = torch.stack([
                torch.from_numpy(np.asarray(Image.open(j[4]).convert("L"), dtype=np.float32) / 255.0) for j in chunk
            ])
            result = pipe(
                images, object_masks, [j[0]["prompt"] for j in chunk], [j[0]["negative_prompt"] for j in chunk],
                num_inference_steps=args.steps, guidance_scale=args.guidance,
                controlnet_conditioning_scale=args.controlnet_scale,
                generator=[torch.Generator().manual_seed(j[5]) for j in chunk],
                output_type="pt", callback=lambda step, total: bar.update(1), show_progress=False,
            )
            generated = result.images
            if args.paste_back:
                from ..models.compositing import paste_object_back

                generated = paste_object_back(generated, images, object_masks, erode=args.paste_erode, feather=args.paste_feather)
            for (row, item, transform, *_rest, name), picture in zip(chunk, generated):
                Image.fromarray(image_ops.image_to_uint8(picture)).save(os.path.join(dirs["generated"], name))
                if args.restore:
                    with Image.open(item.path) as photo:
                        source = image_ops.pil_to_image(photo.convert("RGB"))[0]
                    restored = framing.restore(picture[None], transform, original=source)[0]
                    Image.fromarray(image_ops.image_to_uint8(restored)).save(os.path.join(dirs["restored"], name))
    finally:
        bar.close()
    write_manifest()
    print(f"wrote {len(jobs)} image(s) to {dirs['generated']}; manifest {os.path.join(out, 'manifest.csv')}")
    return 1 if failures else 0
