"""A corpus of hostile and odd input files, generated at test time (nothing binary is committed).

:func:`write_corpus` writes into a folder every kind of file a photo folder holds in the wild, and returns what each
one is and what a reader must make of it (:class:`Case`). The pictures carry a known pattern, so a test can check a
correct result by value: the red channel is 255 on the top quarter of the *displayed* picture and 0 elsewhere
(:func:`displayed_pattern`), whatever the file stores (EXIF-rotated, palette, 16-bit, CMYK, animated...).

Kinds:

* ``ok``: must be read, with the displayed size ``size`` (W, H) and the pattern;
* ``error``: must fail alone, with a one-line reason containing ``reason`` (the run goes on);
* ``bomb``: declares an enormous size; must fail alone *before* its pixels are allocated.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

SIZE = (32, 48)  # W, H of the ordinary pictures (displayed)
LONG_NAME_BYTES = 255  # a file system's limit for one name (ext4, APFS, NTFS in characters)
NON_UTF8_NAME = b"caf\xe9_latin1.png"  # a Latin-1 name from an old camera card: not valid UTF-8


@dataclass(frozen=True)
class Case:
    name: str  # file name (str; surrogate-escaped for the non-UTF-8 one, as os.listdir returns it)
    kind: str  # "ok" | "error" | "bomb"
    what: str  # one line for reports
    size: Optional[tuple[int, int]] = None  # displayed W, H for "ok"
    patterned: bool = True  # "ok" pictures with the top-quarter red pattern (False: flat grey, e.g. 1x1)


def displayed_pattern(width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """uint8 [H,W,3]: red 255 on the top quarter (rows < H/4), green 64 and blue 128 everywhere (not symmetric under
    any rotation or flip, so a picture shown the wrong way round is caught)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 4, :, 0] = 255
    rgb[..., 1], rgb[..., 2] = 64, 128
    return rgb


def _png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB with one tiny compressed row: a few hundred bytes
    that a naive reader turns into width*height*3 bytes of memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 4096), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", row) + _png_chunk(b"IEND", b"")


def _exif_rotated_jpeg(orientation: int) -> bytes:
    """A phone photo: the pixels stored on their side, EXIF Orientation saying how to show them."""
    shown = displayed_pattern()
    # orientation 6: the viewer turns the stored picture 90 degrees clockwise; 8: counter-clockwise
    stored = np.rot90(shown, k=1 if orientation == 6 else -1)
    image = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return buf.getvalue()


def _frames(fmt: str) -> bytes:
    first = Image.fromarray(displayed_pattern())
    second = Image.new("RGB", SIZE, (0, 255, 0))  # a second frame that would show as a flat green picture
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    first.save(buf, format=fmt, save_all=True, append_images=[second], duration=100, loop=0, **extra)
    return buf.getvalue()


def _long_name(suffix: str = ".png") -> str:
    return "L" * (LONG_NAME_BYTES - len(suffix)) + suffix


def corpus_files() -> list[tuple[Case, bytes]]:
    """Every case with the bytes of its file."""
    pattern = Image.fromarray(displayed_pattern())
    good_png = _png_bytes(pattern)
    palette = pattern.convert("P", palette=Image.ADAPTIVE, colors=4)
    palette.info["transparency"] = 255  # an index that no pixel uses: alpha 1 everywhere
    grey_alpha = Image.merge("LA", [pattern.getchannel("R"), Image.new("L", SIZE, 255)])
    sixteen = Image.fromarray(displayed_pattern()[..., 0].astype(np.uint16) * 257)  # mode I;16, 0 or 65535
    cmyk = io.BytesIO()
    pattern.convert("CMYK").save(cmyk, format="JPEG", quality=100)
    files = [
        (Case("plain.png", "ok", "an ordinary RGB PNG (the reference)", SIZE), good_png),
        (Case("zero_bytes.png", "error", "an empty (0-byte) file"), b""),
        (Case("truncated.png", "error", "a PNG cut in the middle of its pixel data"), good_png[: len(good_png) // 2]),
        (Case("truncated.jpg", "error", "a JPEG cut after its header"), _exif_rotated_jpeg(6)[:400]),
        (Case("png_bytes.jpg", "ok", "PNG bytes under a .jpg name (decoded by content)", SIZE), good_png),
        (Case("text.png", "error", "a text file under a .png name"), b"this is not a picture\n"),
        (Case("bomb_huge.png", "bomb", "a PNG declaring 30000x30000 (900 Mpx) in 100 bytes"), bomb_png(30000, 30000)),
        (Case("bomb_large.png", "bomb", "a PNG declaring 10000x10000 (100 Mpx: PIL only warns)"), bomb_png(10000, 10000)),
        (Case("one_pixel.png", "ok", "a 1x1 picture", (1, 1), False), _png_bytes(Image.new("RGB", (1, 1), (128, 128, 128)))),
        (Case("strip.png", "ok", "a 20000x10 strip", (20000, 10), False), _png_bytes(Image.new("RGB", (20000, 10), (90, 90, 90)))),
        (Case("exif6.jpg", "ok", "a phone photo stored on its side, EXIF orientation 6", SIZE), _exif_rotated_jpeg(6)),
        (Case("exif8.jpg", "ok", "a phone photo stored on its side, EXIF orientation 8", SIZE), _exif_rotated_jpeg(8)),
        (Case("palette.png", "ok", "a palette PNG with a transparency entry", SIZE), _png_bytes(palette)),
        (Case("grey_alpha.png", "ok", "a greyscale+alpha PNG (LA)", SIZE, False), _png_bytes(grey_alpha)),
        (Case("sixteen_bit.png", "ok", "a 16-bit greyscale PNG", SIZE, False), _png_bytes(sixteen)),
        (Case("cmyk.jpg", "ok", "a CMYK JPEG", SIZE), cmyk.getvalue()),
        (Case("animated.gif", "ok", "an animated GIF (2 frames: the first is read)", SIZE), _frames("GIF")),
        (Case("animated.webp", "ok", "an animated WebP (2 frames: the first is read)", SIZE), _frames("WEBP")),
        (Case(os.fsdecode(NON_UTF8_NAME), "ok", "a file name that is not valid UTF-8", SIZE), good_png),
        (Case(_long_name(), "ok", f"a {LONG_NAME_BYTES}-byte file name", SIZE), good_png),
    ]
    return files


def write_corpus(folder) -> list[Case]:
    """Write every file of the corpus into ``folder`` (created); returns the cases."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    cases = []
    for case, data in corpus_files():
        with open(os.path.join(os.fsencode(folder), os.fsencode(case.name)), "wb") as fh:
            fh.write(data)
        cases.append(case)
    return cases


def tree_listing(root) -> set[str]:
    """Every path (files, folders, symlinks) under ``root``, relative: compare before/after a run to prove that
    nothing was written anywhere else."""
    root = os.fspath(root)
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found
