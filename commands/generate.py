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

Ids (``<id>`` above) follow :mod:`models.runs.item_ids`: a photo's path below the folder given (``a/x.png`` -> ``a__x``),
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
import logging
import os

from .common import add_run_options, ensure_output_dir, exit_status, print_dry_run, remove_stale_temporaries
from .generate_inputs import collect_items, prepare_items
from ..models.runs import resumable
from .generate_manifest import GENERATE_RECORDS, FolderState, read_state, write_manifest
from .generate_gate import add_gate_options, gate_policy, gate_settings, gated_todo, planned_steps
from .generate_gate import summary as gate_summary
from .generate_plan import abs_path, photo_works, plan_against_folder, plan_jobs, run_settings

log = logging.getLogger("salient_background")

# The modules of this command: generate_inputs (photos, manifests, masks), generate_checks (options, paths, the plan
# of the models), generate_plan (settings, jobs, what is left to do), generate_manifest (the output folder's
# manifest), generate_photo (one photo's work). This module parses the arguments and runs the steps in order.


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
    models.add_argument("--base-model", "--si2", dest="base_model", metavar="PATH",
                        help="the inpainting model, its base read from it: a diffusers folder of SD2, SD1.5 or SDXL "
                             "inpainting, or SD2's single file ComfyUI uses (512-inpainting-ema.safetensors; its "
                             "configs come from 'download sd2-configs'). --si2 is the former name")
    models.add_argument("--controlnet", help="salient ControlNet: diffusers folder, .safetensors or the released .pth "
                                             "(overrides the pipeline folder's controlnet/)")
    sampling = parser.add_argument_group("sampling (defaults = the paper's)")
    sampling.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet scale (default 1.0; 0 = the inpainting baseline)")
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
    add_gate_options(parser)
    add_run_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.runs.ranks import join_ranks
    from .generate_checks import validate_options

    plan = validate_options(args)  # the models' plan: decided once, before any process starts work
    with join_ranks() as ranks:
        return _run(args, ranks, plan)


def _run(args: argparse.Namespace, ranks, plan) -> int:
    from ..models.precision import parse_device, resolve_dtype
    from ..models.runs.journal import Journal
    from ..models.runs.ranks import device_name
    from .common import report_failures, run_shared_part
    from .generate_photo import make_runner, output_dirs

    device = parse_device(device_name(args.device, ranks))
    dtype = resolve_dtype(args.precision, device)
    items = prepare_items(collect_items(args.inputs), args)
    out = ensure_output_dir(args.output_dir)
    remove_stale_temporaries(ranks, [out])
    settings = {**run_settings(args, dtype), **gate_settings(args)}
    jobs = plan_jobs([item for item in items if item.mask_failure is None], args)
    journal = Journal(out, "generate")
    state = read_state(out, journal)
    todo = plan_against_folder(jobs, state.rows, settings, args, out, state.started)
    if gate_policy(args) is not None:
        todo = gated_todo(jobs, state.rows, settings, args.overwrite)
    skipped_failed = sorted({item.id for item in items if item.id in state.failed and not args.retry_failed} &
                            ({j.item.id for j in todo} | {i.id for i in items if i.mask_failure}))
    mask_failed = [item for item in items if item.mask_failure and item.id not in skipped_failed]
    todo = [job for job in todo if job.item.id not in skipped_failed]
    done = len(jobs) - len(todo) - sum(1 for j in jobs if j.item.id in skipped_failed)  # images already there
    works = photo_works(todo, state.rows)
    if args.dry_run:
        return _dry_run(ranks, items, works, state, skipped_failed)
    if works:
        for key, folder in output_dirs(out).items():
            if key != "restored" or args.restore:
                os.makedirs(folder, exist_ok=True)
    if works:
        run_shared_part(
            ranks, journal, works, key=lambda w: w.item.id, total=planned_steps(len(todo), args), unit="step",
            desc="generate", args=args, already=planned_steps(done, args),
            make_runner=lambda mine, progress: make_runner(plan, mine, args, out, settings, device, dtype, progress,
                                                           journal))
    else:
        ranks.barrier()  # every process has read the records before the main process merges them
    if not ranks.is_main:
        return 0
    _record_mask_failures(journal, mask_failed)
    this_run = {w.item.id for w in works} | {i.id for i in mask_failed}  # (records of a stopped run are not new)
    pending = journal.pending()
    failed_now = [pending[key]["id"] for key in resumable.new_failures(pending, this_run)]
    merged = _merge(out, journal, state, settings)
    if not works:
        print(f"nothing to do: all {done} image(s) already generated in {out} (--overwrite to redo)")
    else:
        written = sum(len(w.jobs) for w in works if w.item.id not in failed_now)
        print(f"generate: {written} image(s) of {len(works) - len(set(failed_now) - {i.id for i in mask_failed})} "
              f"photo(s) written to {os.path.join(out, 'generated')}, {done} already done; manifest "
              f"{os.path.join(out, 'manifest.csv')}")
    if gate_policy(args) is not None:
        print(gate_summary(merged.rows))
    report_failures("generate", merged.failed, skipped_failed)
    return exit_status("generate", len(failed_now))


def _record_mask_failures(journal, items) -> None:
    """Photos whose mask the ``mask`` command could not make fail here, with its reason (main process)."""
    for item in items:
        log.error("skipped %s: %s", item.path, item.mask_failure)
        journal.write(item.id, {"id": item.id, "source": abs_path(item.path), "failed": item.mask_failure})


def _merge(out: str, journal, state: FolderState, settings: dict) -> FolderState:
    """The main process, once every process is done: fold the new records into the manifest, then drop them."""

    def write(rows, failed, records):
        if records or not os.path.isfile(os.path.join(out, "manifest.json")) or rows != state.rows:
            write_manifest(out, rows, settings, failed)

    merged = resumable.merge(GENERATE_RECORDS, journal, dict(state.rows), dict(state.failed), write)
    return FolderState(merged.rows, merged.failed, {})


def _dry_run(ranks, items, works, state: FolderState, skipped_failed: list) -> int:
    """List every photo and what this run would do with it; no model is loaded, nothing is written."""
    if not ranks.is_main:
        return 0
    planned = {w.item.id: w for w in works}

    def status(item) -> str:
        if item.mask_failure and item.id not in skipped_failed:
            return f"skipped: {item.mask_failure}"
        reason = state.failed[item.id]["reason"] if item.id in skipped_failed else None
        note = f": {len(planned[item.id].jobs)} image(s)" if item.id in planned else ""
        return resumable.status(to_do=item.id in planned, failed_reason=reason, to_do_note=note)

    ordered = sorted(items, key=lambda i: i.id)
    mask_failed = sum(1 for i in items if i.mask_failure and i.id not in skipped_failed)
    images = sum(len(w.jobs) for w in works)
    print_dry_run([(i.id, i.path, status(i)) for i in ordered],
                  resumable.summary(len(items), "photo", len(works),
                                    len(items) - len(works) - len(skipped_failed) - mask_failed, len(skipped_failed),
                                    to_do_note=f" ({images} image(s))",
                                    extra=f", {mask_failed} without a mask (failed in the mask step)" if mask_failed else ""))
    return 0
