"""Soak a real ComfyUI server with the pack: hundreds of prompts over the HTTP API, bounded in count and time.

Starts ComfyUI (``--cpu``, on 127.0.0.1 only, temporary folders, random-weight models: the integration harness's
server, ``tests/sb_testkit/comfy_server.py``) and sends it the stream that ``tests/sb_testkit/comfy_soak.py`` builds:
every shipped workflow with varied photos, masks, seeds, strengths and batch sizes, and a share of prompts that must
fail (missing files, a mask of the wrong size, a ControlNet of another base, a NaN strength, interrupts mid-run).
Prints the figures (completed / failed as expected / unexpected, the queue at the end, the server's RSS and its
growth per 100 prompts after the warm-up, what the pack's model caches hold) and exits 1 if any check fails:
an unexpected outcome, a prompt past its timeout, a queue not empty at the end, RSS growth over ``--rss-bound``
MB per 100 prompts, a model held twice.

    COMFYUI_PATH=/opt/comfyui /opt/comfyvenv/bin/python benchmarks/soak_comfyui.py --prompts 300 --minutes 20

Run it with a Python that has ComfyUI's requirements and the pack (the server runs under ``--python``, default this
one). The SD1.5 random models (~3 GB on disk) are built once by tests/integration/make_base_models.py into
``SB_BASE_MODELS_DIR`` (default ``<tmp>/sb_base_models``), shared with the integration tests.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sb_testkit import comfy_soak  # noqa: E402
from sb_testkit.comfy_server import ComfyServer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""),
                        help="the ComfyUI folder holding main.py (default: $COMFYUI_PATH)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable,
                        help="the Python that runs the server (default: $COMFYUI_PYTHON or this one)")
    parser.add_argument("--prompts", type=int, default=300, help="prompts to send (default 300)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="stop sending after this many minutes, whatever the count (default 20)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one prompt may take (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt stream (default 0)")
    parser.add_argument("--log", default=None,
                        help="write every prompt's outcome (kind, result, seconds, RSS, models held) to this JSONL file")
    parser.add_argument("--rss-bound", type=float, default=50.0,
                        help="fail above this RSS growth, MB per 100 prompts after the warm-up (default 50)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.comfyui).expanduser()
    if not (root / "main.py").is_file():
        print(f"error: --comfyui / COMFYUI_PATH {str(root)!r} has no main.py: point it at a ComfyUI checkout",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sb_soak_") as work:
        server = ComfyServer(root.resolve(), args.python, Path(work))
        try:
            t0 = time.monotonic()
            server.start()
            comfy_soak.place_models(server, comfy_soak.default_models_cache())
            photos = comfy_soak.write_inputs(server)
            stream = comfy_soak.build_stream(args.prompts, photos, seed=args.seed)
            warmup = len(comfy_soak.VALID_KINDS) + len(comfy_soak.INVALID_KINDS)
            print(f"[soak] server up and models placed in {time.monotonic() - t0:.0f} s; sending {len(stream)} "
                  f"prompts (the first {warmup}: one of each kind, the warm-up)", flush=True)
            report = comfy_soak.soak(server, stream, warmup=warmup, timeout=args.timeout,
                                     max_seconds=args.minutes * 60, log=lambda s: print(s, flush=True))
        finally:
            server.stop()
    if args.log:
        with open(args.log, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(dataclasses.asdict(o)) + "\n" for o in report.outcomes)
    print("\n".join(report.lines(args.rss_bound)))
    failures = report.failures(args.rss_bound)
    print("SOAK " + ("FAILED: " + "; ".join(failures) if failures else "PASSED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
