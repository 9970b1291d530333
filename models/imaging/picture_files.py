"""Opening a picture file the one safe way (photos and masks, every command and the training data).

What a file from the wild may be, and what :func:`open_picture` makes of it:

* anything PIL cannot decode (0 bytes, truncated, text under a ``.png`` name, a broken header): an
  :class:`~models.errors.InputError` naming the file, so one bad file fails alone and the run goes on;
* a *decompression bomb*, a few bytes declaring an enormous size: refused from its header, before its pixels are
  allocated, once it declares more than ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's own limit, ~89 Mpx; PIL only warns
  below twice that);
* a phone photo stored on its side with an EXIF ``Orientation``: turned the way viewers show it
  (``ImageOps.exif_transpose``), so masks made from it, and outputs, follow the displayed orientation;
* an animated GIF/WebP/APNG or a multi-page TIFF: its first frame;
* any extension: the content decides (PNG bytes under a ``.jpg`` name are read as PNG).
"""
from __future__ import annotations

import os

from PIL import Image, ImageOps

from ..errors import InputError


def check_declared_size(image: Image.Image, path: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        raise InputError(f"{path!r} declares {image.width}x{image.height} pixels, more than the {limit} allowed: "
                         "refused unread (a damaged file or a decompression bomb; a real picture that big must be "
                         "scaled down first)")


def open_picture(path: str | os.PathLike) -> Image.Image:
    """The decoded first frame of the picture at ``path``, EXIF orientation applied (a PIL image in memory, file
    closed). Raises :class:`InputError` naming the file when it cannot be used (see the module docstring)."""
    shown = os.fsdecode(path)
    try:
        with Image.open(path) as image:
            check_declared_size(image, shown)
            image.load()  # the first frame: Image.open stands on frame 0
            return ImageOps.exif_transpose(image)  # a copy, turned when the EXIF orientation says so
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # beyond twice the limit: PIL refuses it in Image.open
        raise InputError(f"{shown!r}: refused unread: {exc}") from None
    except FileNotFoundError:
        raise InputError(f"{shown!r} does not exist (moved or deleted while the run was going on?)") from None
    except Exception as exc:  # noqa: BLE001 -- decoders raise OSError, ValueError, SyntaxError, struct.error, EOFError...
        raise InputError(f"cannot read {shown!r} as a picture ({type(exc).__name__}: {exc})") from None
