"""File helpers for the test kit: per-process temporary folders and disk-cheap copies of large stand-in models."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def process_temporary_folder(prefix: str) -> str:
    """A new temporary folder that is removed at interpreter exit (tiny models are rebuilt by the next process)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def link_or_copy(source, target) -> None:
    """Put ``source`` at ``target`` as a hard link (no disk used: the stand-in InSPyReNet is ~350 MB and the code
    under test replaces files atomically, never in place), or as a copy where a link is impossible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
