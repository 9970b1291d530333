"""Small helpers every command shares: output folders."""
from __future__ import annotations

import os

from ..models.errors import InputError


def ensure_output_dir(path: str, what: str = "output folder") -> str:
    """Create ``path`` (and its parents) as a folder and return its absolute path.

    A path that exists as a file, or a folder that cannot be created, is an :class:`InputError` that names it,
    raised before any heavy work.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"the {what} {path!r} is a file, not a folder: choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise InputError(f"cannot create the {what} {path!r}: a part of that path is a file, not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot create the {what} {path!r}: {exc.strerror or exc}") from None
    return path
