"""Files for the ``mask`` and ``generate`` commands: finding input photos, and writing outputs atomically."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from ..models.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUR_OUTPUT_ENDINGS = ("_mask.png", "_cutout.png")  # written by `mask`; not inputs on a second run


@dataclass(frozen=True)
class FoundImage:
    """An input photo and the folder given on the command line that it was found in (None: given on its own)."""

    path: str
    root: Optional[str] = None

    @property
    def identity(self) -> str:
        return os.path.normcase(os.path.abspath(self.path))


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, sorted), without the ``mask`` command's own outputs."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    return [f for f in found if not f.endswith(OUR_OUTPUT_ENDINGS)]


def find_images(inputs: list[str], other: Optional[Callable[[str], bool]] = None) -> list[FoundImage]:
    """Photos in ``inputs`` (files and folders). ``other(path)`` True: a file the caller reads itself (skipped here)."""
    found: list[FoundImage] = []
    for entry in inputs:
        if os.path.isdir(entry):
            found += [FoundImage(p, entry) for p in list_images(entry)]
        elif os.path.isfile(entry):
            if other is None or not other(entry):
                found.append(FoundImage(entry))
        else:
            raise InputError(f"no such image or folder: {entry!r}")
    return found


# ---------------------------------------------------------------------------------------------- atomic writes
# (the helpers live in models/runs/atomic.py, beside the run records that use them too)
from ..models.runs.atomic import write_atomically  # noqa: E402


def save_image_atomically(image, path: str) -> None:
    """Save a PIL image as PNG at ``path`` atomically."""
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
