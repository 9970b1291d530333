"""``python -m salient_background mask``: salient-object mask and cut-out of photos, outside ComfyUI."""
from __future__ import annotations

import argparse
import logging
import os

from ..models.errors import InputError

log = logging.getLogger("salient_background")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="salient-object mask (object = white) and RGBA cut-out of images",
        description="Find the salient object in each image with InSPyReNet and write <name>_mask.png "
                    "(object = white, soft unless --binary) and <name>_cutout.png (RGBA).",
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


def find_images(inputs: list[str]) -> list[str]:
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, files in sorted(os.walk(item)):
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise InputError(f"no such image or folder: {item!r}")
    # our own outputs are not inputs on a second run
    return [f for f in found if not f.endswith(("_mask.png", "_cutout.png"))]


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from ..models import image_ops
    from ..models.salient import load_salient_model
    from ..models.precision import default_device, resolve_dtype

    images = find_images(args.inputs)
    if not images:
        raise InputError(f"no images found in {args.inputs} (looked for {', '.join(IMAGE_SUFFIXES)})")
    device = torch.device(args.device) if args.device else default_device()
    model = load_salient_model(args.checkpoint, mode=args.mode, device=device, dtype=resolve_dtype(args.precision, device))
    failures = 0
    for index, path in enumerate(images, 1):
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
        out_dir = args.output_dir or os.path.dirname(os.path.abspath(path))
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(out_dir, f"{stem}_mask.png")
        cutout_path = os.path.join(out_dir, f"{stem}_cutout.png")
        image_ops.mask_to_pil(mask).save(mask_path)
        image_ops.cutout_rgba(image[0], mask).save(cutout_path)
        note = " (no salient object: empty mask)" if prediction.empty[0] else ""
        print(f"[{index}/{len(images)}] {path} -> {mask_path}, {cutout_path}{note}")
    return 1 if failures else 0
