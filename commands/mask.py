"""``python -m salient_background mask``: salient-object mask and cut-out of photos, outside ComfyUI."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional

from ..models.errors import InputError
from ..models.runs.item_ids import assign_ids, base_name, colliding_groups
from .common import ensure_output_dir
from .files import IMAGE_SUFFIXES, FoundImage, find_images, save_image_atomically

log = logging.getLogger("salient_background")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="salient-object mask (object = white) and RGBA cut-out of images",
        description="Find the salient object in each image with InSPyReNet and write <name>_mask.png "
                    "(object = white, soft unless --binary) and <name>_cutout.png (RGBA). With --output-dir, <name> is the "
                    "image's path below the folder given (a/x.png -> a__x); names that two inputs share get a "
                    "suffix (x+<hash>), so no output overwrites another.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="InSPyReNet checkpoint: ckpt_base.pth (or .safetensors)")
    parser.add_argument("--mode", choices=["base", "fast"], default="base",
                        help="base = the paper's setting (ckpt_base.pth); fast = ckpt_fast.pth (default: base)")
    parser.add_argument("--resize", choices=["auto", "dynamic", "static"], default="auto",
                        help="auto = transparent-background 1.2.12 (the paper's pin): dynamic in base mode, 384x384 in "
                             "fast mode; dynamic/static force one policy (static at base size = 1.3.x). Default: auto")
    parser.add_argument("--binary", action="store_true", help="write a binary mask (>= 0.5) instead of the soft map")
    parser.add_argument("--output-dir", help="where to write (default: next to each image)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto = fp16 on CUDA, fp32 otherwise")
    parser.set_defaults(func=run)


def output_paths(images: list[FoundImage], output_dir: Optional[str]) -> list[tuple[str, str]]:
    """(mask path, cut-out path) per image: ``<id>_mask.png`` / ``<id>_cutout.png`` with the ids of
    :mod:`models.item_ids` -- in ``output_dir``, or next to each image (ids made among that folder's images)."""
    folders = [output_dir or os.path.dirname(os.path.abspath(im.path)) for im in images]
    ids: dict[tuple[str, str], str] = {}
    for folder in sorted(set(folders)):
        group = [im for im, f in zip(images, folders) if f == folder]
        roots = [im.root if output_dir else None for im in group]
        assigned = assign_ids((im.identity, base_name(im.path, root)) for im, root in zip(group, roots))
        for base, identities in colliding_groups(assigned).items():
            log.warning("%d inputs share the name %r; their outputs get a suffix: %s", len(identities), base,
                        ", ".join(f"{i} -> {assigned[i]}" for i in identities))
        ids.update({(folder, identity): item_id for identity, item_id in assigned.items()})
    return [(os.path.join(f, ids[f, im.identity] + "_mask.png"), os.path.join(f, ids[f, im.identity] + "_cutout.png"))
            for im, f in zip(images, folders)]


def _unique(images: list[FoundImage]) -> list[FoundImage]:
    """The same file given twice (a folder and a file in it) is done once."""
    seen, unique = set(), []
    for im in images:
        if im.identity not in seen:
            seen.add(im.identity)
            unique.append(im)
    return unique


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..models.imaging import image_ops
    from ..models.precision import parse_device, resolve_dtype
    from ..models.networks.salient import load_salient_model

    images = _unique(find_images(args.inputs))
    if not images:
        raise InputError(f"no images found in {args.inputs} (looked for {', '.join(IMAGE_SUFFIXES)})")
    device = parse_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    output_dir = ensure_output_dir(args.output_dir) if args.output_dir else None
    outputs = output_paths(images, output_dir)
    model = load_salient_model(args.checkpoint, mode=args.mode, device=device, dtype=dtype)
    failures = 0
    for index, (found, (mask_path, cutout_path)) in enumerate(zip(images, outputs), 1):
        path = found.path
        try:
            with Image.open(path) as pil:
                pil.load()
                image, _ = image_ops.pil_to_image(pil)
        except (OSError, ValueError) as exc:
            log.error("[%d/%d] skipped %s: cannot read it as an image (%s)", index, len(images), path, exc)
            failures += 1
            continue
        prediction = model.predict(image, resize=args.resize)
        mask = prediction.maps[0].float().cpu()
        if args.binary:
            mask = (mask >= 0.5).float()
        save_image_atomically(image_ops.mask_to_pil(mask), mask_path)
        save_image_atomically(image_ops.cutout_rgba(image[0], mask), cutout_path)
        note = " (no salient object: empty mask)" if prediction.empty[0] else ""
        print(f"[{index}/{len(images)}] {path} -> {mask_path}, {cutout_path}{note}")
    return 1 if failures else 0
