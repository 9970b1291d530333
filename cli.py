"""The pack's one command line: ``python -m salient_background <command> ...``.

Each command lives in its own module under ``commands/`` and exposes ``add_parser(subparsers)``, which
registers its arguments and sets ``func`` (called with the parsed namespace, returns an exit code).
Heavy imports happen inside ``func`` so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .models.errors import UserFacingError

# module names under salient_background.commands, in the order --help lists them
COMMANDS = ["demo", "mask", "generate", "download", "evaluate", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m salient_background",
        description="Salient-object-aware background generation (arXiv 2404.10157) outside ComfyUI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_parsed(parser.parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run a parsed command; a :class:`UserFacingError` becomes one line and exit code 2."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

