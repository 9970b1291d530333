"""The pack's one command line: ``python -m salient_background <command> ...``.

Each command lives in its own module under ``commands/`` and exposes ``add_parser(subparsers)``, which
registers its arguments and sets ``func`` (called with the parsed namespace, returns an exit code).
Heavy imports happen inside ``func`` so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys

from .models.errors import UserFacingError
from .models.library_progress import disable_library_progress_bars

# module names under salient_background.commands, in the order --help lists them
COMMANDS = ["demo", "mask", "generate", "download", "evaluate", "training"]


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


# third-party loggers whose DEBUG lines drown ours under -v (PIL lists every PNG chunk it reads)
NOISY_LOGGERS = ("PIL", "urllib3", "filelock", "h5py", "matplotlib", "fsspec", "httpx", "httpcore", "asyncio")


# exit statuses (docs/command-line.md): 0 everything done (or skipped as failed before), 1 new per-item failures,
# 2 a usage or setup error, 130 interrupted (Ctrl-C or SIGTERM)
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run a parsed command; a :class:`UserFacingError` (or a full disk, a read-only file system)
    becomes one line and exit code 2,
    Ctrl-C (or SIGTERM) one line and exit code 130."""
    configure_logging(args.verbose)
    printable_file_names()
    if getattr(args, "no_progress", False):
        disable_library_progress_bars()
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the disk filled up (or the folder turned read-only) outside the items: e.g. the merge
        from .models.runs.engine import WRITE_ONLY_ERRNOS, output_unwritable

        if exc.errno not in WRITE_ONLY_ERRNOS:
            raise
        print(f"error: {output_unwritable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what torchrun, a scheduler or ``kill`` sends) stops a command as Ctrl-C does: the files being
    written are finished and recorded, so a rerun redoes nothing finished (Python's default would die mid-write)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding program): leave its signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def printable_file_names() -> None:
    """A file name that is not valid UTF-8 (an old camera card's Latin-1) prints as ``\\xe9`` instead of failing its
    item with UnicodeEncodeError: stdout's errors become "backslashreplace", as Python's stderr already is."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream we may reconfigure (an embedding program's)
            pass


def configure_logging(verbose: bool) -> None:
    """Our logger at DEBUG with -v (else INFO); every other library at INFO, the chatty ones at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("salient_background").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
