"""Per-image measurements kept on disk, so a table is resumed, sharded and recomputed without measuring twice.

One ``.npz`` per measured item under ``<cache>/<kind>/<key[:2]>/<key>.npz``: its scores (a JSON string) and its
feature vectors (one array each). The key is a hash of what determines the result: the bytes of every file that
goes in (image, mask, original), the prompt, and the measuring models and settings. So

* a run killed at any moment keeps every finished item (each file is written atomically) and redoes only the rest;
* several processes share one cache without writing the same file (an item belongs to one process);
* another reference set (FID/KID) reuses every generated image's features: only the new reference photos are
  measured, because set-level metrics are computed from the cached features afterwards;
* an image changed on disk (another generation into the same folder) gets a new key and is measured again.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ...runs.atomic import write_atomically

SCORES_ENTRY = "__scores__"
_CHUNK = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def item_key(*parts) -> str:
    """A stable key from JSON-serialisable parts (file digests, prompt, model identity)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


@dataclass
class Measurement:
    scores: dict = field(default_factory=dict)  # name -> float (NaN allowed)
    features: dict = field(default_factory=dict)  # name -> 1-D float array


class MeasurementCache:
    def __init__(self, folder: str):
        self.folder = folder

    def _path(self, kind: str, key: str) -> str:
        return os.path.join(self.folder, kind, key[:2], key + ".npz")

    def get(self, kind: str, key: str) -> Optional[Measurement]:
        """The cached measurement, or None (absent, or unreadable: a file cut short is measured again)."""
        path = self._path(kind, key)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                scores = json.loads(str(data[SCORES_ENTRY]))
                features = {name: data[name] for name in data.files if name != SCORES_ENTRY}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        return Measurement(scores, features)

    def put(self, kind: str, key: str, measurement: Measurement) -> None:
        path = self._path(kind, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arrays = {name: np.asarray(v, dtype=np.float32) for name, v in measurement.features.items()}
        scores = json.dumps({k: (None if v is None else float(v)) for k, v in measurement.scores.items()}, sort_keys=True)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **{SCORES_ENTRY: np.asarray(scores)}, **arrays)

        write_atomically(path, write)
