"""The pack's one command line: ``python -m salient_background <command> ...``.

Each command lives in its own module under ``commands/`` and exposes ``add_parser(subparsers)``, which
registers its arguments and sets ``func`` (called with the parsed namespace, returns an exit code).
Heavy imports happen inside ``func`` so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import logging
import os
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


# third-party loggers whose DEBUG lines drown ours under -v (PIL lists every PNG chunk it reads)
NOISY_LOGGERS = ("PIL", "urllib3", "filelock", "h5py", "matplotlib", "fsspec", "httpx", "httpcore", "asyncio")


def run_parsed(args: argparse.Namespace) -> int:
    """Set up logging and run a parsed command; a :class:`UserFacingError` becomes one line and exit code 2,
    Ctrl-C one line and exit code 130."""
    configure_logging(args.verbose)
    if getattr(args, "no_progress", False):
        disable_library_progress_bars()
    try:
        return int(args.func(args) or 0)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def configure_logging(verbose: bool) -> None:
    """Our logger at DEBUG with -v (else INFO); every other library at INFO, the chatty ones at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("salient_background").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# module -> its function that turns its progress bars off (transformers' and diffusers' "Loading ..." bars)
PROGRESS_BAR_SWITCHES = {
    "huggingface_hub.utils": "disable_progress_bars",
    "transformers.utils.logging": "disable_progress_bar",
    "diffusers.utils.logging": "disable_progress_bar",
}


def disable_library_progress_bars() -> None:
    """``--no-progress`` also silences the loading bars of transformers, diffusers and huggingface_hub.

    Importing them costs seconds, and commands such as ``evaluate`` never need them: a module already imported is
    switched off now, the others right after their first import (if they are installed at all)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface_hub and transformers read it at import
    pending = {}
    for module, function in PROGRESS_BAR_SWITCHES.items():
        if module in sys.modules:
            getattr(sys.modules[module], function, lambda: None)()
        else:
            pending[module] = function
    if pending and not any(isinstance(f, _SwitchOffAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SwitchOffAfterImport(pending))


class _SwitchOffAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a watched module so its switch is called once it has loaded."""

    def __init__(self, switches: dict[str, str]):
        self.switches = switches

    def find_spec(self, name, path, target=None):
        if name not in self.switches:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _CallAfterExec(spec.loader, self.switches.pop(name))
                    return spec
        return None


class _CallAfterExec(importlib.abc.Loader):
    def __init__(self, loader, function: str):
        self.loader, self.function = loader, function

    def __getattr__(self, name):  # get_source, is_package, resource readers: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        getattr(module, self.function, lambda: None)()
