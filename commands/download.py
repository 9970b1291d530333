"""``python -m salient_background download``: fetch the published model files into ComfyUI's model folders.

Nothing else in the pack touches the network; this command does, only when run.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    from ..models.model_files.model_registry import selection_names

    parser = subparsers.add_parser(
        "download",
        help="fetch the model files (SD2 inpainting, the salient ControlNet, InSPyReNet, SAM) into ComfyUI's folders",
        description=(
            "Download the pack's published model files into ComfyUI's model folders, verified against the sizes and "
            "checksums in models/model_files/model_registry.py. Without names: everything except SAM ViT-L/H. Files already "
            "present and valid are skipped; an interrupted download resumes."
        ),
    )
    parser.add_argument(
        "what", nargs="*", metavar="what",
        help="what to fetch (default: 'default'): " + ", ".join(selection_names()),
    )
    parser.add_argument("--models-dir", help="ComfyUI's models folder (or any folder; files go to DIR/<folder>/); it "
                                             "must exist unless --create-models-dir")
    parser.add_argument("--create-models-dir", action="store_true",
                        help="create --models-dir if it does not exist (without it a missing folder is refused, so a "
                             "misspelt path never receives gigabytes)")
    parser.add_argument("--comfyui", help="a ComfyUI folder (default: the one around the pack, else $COMFYUI_PATH)")
    parser.add_argument("--extra-model-paths", action="append", default=[], metavar="YAML",
                        help="an extra_model_paths.yaml to honour (ComfyUI's own one is read automatically)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be fetched, where, sizes; no network")
    parser.add_argument("--list", action="store_true", help="print the model table and exit")
    parser.add_argument("--markdown", action="store_true", help="print the README's models table and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _check_text(m) -> str:
    parts = [name for name in ("sha256", "md5") if getattr(m, name)]
    if m.size is not None:
        parts.append("size")
    if m.verified:
        return "verified (" + "+".join(parts) + ")"
    return "UNVERIFIED (" + ("size only" if parts else "no published size or checksum") + ")"


def run(args: argparse.Namespace) -> int:
    from ..models.model_files import downloader
    from ..models.model_files.model_paths import check_models_dir, discover
    from ..models.model_files.model_registry import MODEL_FILES, cli_name, render_markdown_table, select

    if args.markdown:
        print(render_markdown_table())
        return 0
    if args.list:
        for m in MODEL_FILES:
            print(f"{cli_name(m.key):20} {m.folder + '/' + m.filename:62} {m.display_size():>10}  {m.licence:26} "
                  f"{_check_text(m)}\n{'':20} {m.urls[0]}")
        return 0

    entries = select(args.what)
    if args.models_dir:
        check_models_dir(args.models_dir, create=args.create_models_dir)
    locations = discover(args.models_dir, comfyui_root=args.comfyui, extra_configs=args.extra_model_paths)
    print("model folders: " + "; ".join(locations.origin))
    if args.dry_run:
        total, approx = 0, False
        outcomes = downloader.plan(entries, locations)
        for o in outcomes:
            m = o.entry
            if o.status == "planned":
                total += m.expected_bytes() or 0
                approx = approx or m.size is None
                print(f"would fetch  {m.filename:48} {m.display_size():>10}  -> {o.path}  [{_check_text(m)}]")
                print(f"             from {m.urls[0]}")
            elif o.status == "present":
                print(f"present      {m.filename:48} {'':>10}  at {o.path}  [{_check_text(m)}: matches]")
            else:
                print(f"CORRUPT      {m.filename:48} {'':>10}  at {o.path}  ({o.note}; delete it and run again)")
        unknown = sum(1 for o in outcomes if o.status == "planned" and o.entry.expected_bytes() is None)
        print(f"total to fetch: {'about ' if approx else ''}{total / 1e9:.2f} GB"
              + (f", plus {unknown} file(s) of unknown size" if unknown else ""))
        return 0

    failed = []
    for entry in entries:
        try:
            (outcome,) = downloader.ensure([entry], locations, progress=not args.quiet)
        except downloader.DownloadError as exc:
            if exc.entry is None:  # a local problem (disk, corrupt file): its message is the whole story
                print(f"FAILED: {exc}", file=sys.stderr)
            failed.append(exc)
            continue
        word = "already present" if outcome.status == "present" else "downloaded"
        note = "verified" if outcome.verified else "UNVERIFIED: no published checksum"
        print(f"{word:16} {outcome.path}  ({note})")
    if failed:
        _report_failures([e for e in failed if e.entry is not None])
        raise downloader.DownloadError(f"{len(failed)} of {len(entries)} file(s) could not be fetched (see above).")
    return 0


def _report_failures(errors) -> None:
    """Files no URL could deliver: each distinct cause once (with the files it hit), one table of file, URL and
    destination, and the advice once, instead of one long paragraph per file repeating it all."""
    from urllib.parse import urlparse

    from ..models.model_files.downloader import network_advice

    if not errors:
        return
    advice = list(dict.fromkeys(network_advice(u).strip() for exc in errors for u in exc.entry.urls))
    causes: dict[str, list[str]] = {}
    for exc in errors:
        for text in exc.failures:
            for tip in advice:
                text = text.replace(tip, "").replace(tip.rstrip("."), "")
            for url in exc.entry.urls:  # the table lists the URLs; the cause names the host
                text = text.replace(url, urlparse(url).netloc)
            causes.setdefault(text.strip().rstrip(". "), []).append(exc.entry.basename)
    print(f"FAILED: {len(errors)} file(s) could not be fetched:", file=sys.stderr)
    for cause, names in causes.items():
        print(f"  {cause} ({', '.join(dict.fromkeys(names))})", file=sys.stderr)
    rows = [("file", "URL", "destination")] + [(e.entry.basename, e.entry.urls[0], e.target) for e in errors]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    print("Manual alternative: download each URL below in a browser and save it as its destination.", file=sys.stderr)
    for name, url, target in rows:
        print(f"  {name:{widths[0]}}  {url:{widths[1]}}  {target}", file=sys.stderr)
    for tip in advice:
        print(tip, file=sys.stderr)
