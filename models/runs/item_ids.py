"""One collision-free, file-name-safe id per input photo, shared by the ``mask`` and ``generate`` commands.

Outputs are named after these ids (``<id>_mask.png``, ``generated/<id>_s<seed>.png``), so two inputs must never
share one, and an input must keep its id however the inputs are ordered (resumed and split runs rely on it).

The scheme:

1. Each input has a **base name**: its path relative to the folder given on the command line, without the file
   suffix, folders joined by ``__`` (``F/a/x.png`` under the folder ``F`` -> ``a__x``); a file given on its own
   (or a manifest row without an ``id``) -> its stem; a manifest's ``id`` -> that id. Characters other than
   letters, digits, ``-``, ``_`` and ``.`` become ``_``; so a folder of uniquely named photos keeps its names
   (``x.png`` -> ``x``). An id never holds ``/``, ``..`` or a leading ``.`` and stays within 120 bytes, so outputs
   named after it land in the output folder and fit a file system's 255-byte limit (see :func:`safe_name`).
2. Inputs whose base names differ keep them. When several *different* inputs share a base name (``x.png`` and
   ``x.jpg``; ``a/x.png`` given as two separate files; ``a b.png`` and ``a_b.png``), each of them gets
   ``<base>+<h>``, where ``<h>`` is the start of the SHA-1 of the input's identity (its absolute path, plus the
   manifest row's contents for manifest rows). A base name never contains ``+``, so such an id cannot equal
   another input's base name; the hash is lengthened until the group's ids differ.

An id therefore depends only on the input itself and on which other inputs share its base name -- never on the
order in which they were given.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, Optional

SUBFOLDER_SEPARATOR = "__"
DISAMBIGUATION_MARK = "+"
_HASH_START = 8


MAX_NAME_BYTES = 120  # an id plus what the commands add (``_cutout.png``, a temporary file's suffix) stays < 255


def safe_name(text: str) -> str:
    """``text`` with every character other than letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``; never
    ``..`` nor a leading ``.`` (no hidden or parent-folder names); at most :data:`MAX_NAME_BYTES` bytes in UTF-8 (a
    longer one keeps its start and gets ``-`` and 8 hex digits of the SHA-1 of the whole name)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip()) or "image"
    name = name.replace("..", "__")
    if name.startswith("."):
        name = "_" + name[1:]
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    head = encoded[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore")  # "ignore": a character cut in two is dropped
    return f"{head}-{_digest(name)[:8]}"


def base_name(path: str, root: Optional[str] = None) -> str:
    """The base name of ``path``: relative to the folder ``root`` when given (folders joined by ``__``), else its stem."""
    if root is not None:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        parts = os.path.splitext(relative)[0].split(os.sep)
        if os.altsep:
            parts = [p for part in parts for p in part.split(os.altsep)]
        return SUBFOLDER_SEPARATOR.join(safe_name(p) for p in parts)
    return safe_name(os.path.splitext(os.path.basename(path))[0])


def _digest(identity: str) -> str:
    return hashlib.sha1(identity.encode("utf-8", "surrogatepass")).hexdigest()  # a non-UTF-8 file name too


def assign_ids(inputs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{identity: id}`` for ``(identity, base name)`` pairs; see the module docstring for the scheme.

    ``identity`` tells inputs apart (equal identities are the same input and get the same id); ``base name`` is
    what :func:`base_name` or :func:`safe_name` gave. An identity listed with two base names keeps the smaller.
    """
    bases: dict[str, str] = {}
    for identity, base in inputs:
        base = safe_name(base)  # never contains DISAMBIGUATION_MARK
        bases[identity] = min(bases.get(identity, base), base, key=lambda b: (len(b), b))
    groups: dict[str, list[str]] = {}
    for identity, base in bases.items():
        groups.setdefault(base, []).append(identity)
    ids: dict[str, str] = {}
    for base, identities in groups.items():
        if len(identities) == 1:
            ids[identities[0]] = base
            continue
        digests = {identity: _digest(identity) for identity in identities}
        length = _HASH_START
        while len({digests[i][:length] for i in identities}) < len(identities):
            length += 4
        for identity in identities:
            ids[identity] = f"{base}{DISAMBIGUATION_MARK}{digests[identity][:length]}"
    return ids


def colliding_groups(ids: dict[str, str]) -> dict[str, list[str]]:
    """``{base name: [identity, ...]}`` for the base names that needed a hash suffix (for a warning)."""
    groups: dict[str, list[str]] = {}
    for identity, item_id in ids.items():
        if DISAMBIGUATION_MARK in item_id:
            groups.setdefault(item_id.split(DISAMBIGUATION_MARK, 1)[0], []).append(identity)
    return {base: sorted(identities) for base, identities in groups.items()}
