"""Loaded models kept between runs, reloaded when their file changes on disk.

The node loaders (InSPyReNet, SAM) share this one cache class. A ComfyUI graph asks a loader for the same model on
every run; loading a checkpoint again each time would cost seconds and memory, but a file replaced on disk (a
download finished, a new training export) must be picked up without restarting ComfyUI.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")

_ALL_CACHES: "weakref.WeakSet[ModelCache]" = weakref.WeakSet()


def file_stamp(path: str) -> tuple[int, int]:
    """What tells a replaced file from the one loaded before: modification time (ns) and size."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


class ModelCache(Generic[T]):
    """At most ``size`` loaded models, the least recently used dropped first.

    An entry is keyed on the file's real path plus ``settings``: everything else that changes the loaded model
    (mode, dtype, device...). A hit also needs the file's :func:`file_stamp` to be unchanged; a changed file is
    loaded anew and replaces its old entry. Loads run under one lock, so two threads asking for the same model
    load it once.
    """

    def __init__(self, size: int = 2, name: str = ""):
        if size < 1:
            raise ValueError("a model cache holds at least one model")
        self.size = size
        self.name = name or f"cache-{id(self):x}"
        self._entries: OrderedDict[tuple, tuple[tuple[int, int], T]] = OrderedDict()
        self._lock = threading.Lock()
        _ALL_CACHES.add(self)

    def keys(self) -> list[tuple]:
        """The ``(real path, *settings)`` of every model held, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, path: str, settings: tuple[Hashable, ...], load: Callable[[], T]) -> T:
        """The cached model for ``path`` and ``settings``, or ``load()``'s result (then cached)."""
        key = (os.path.realpath(path), *settings)
        with self._lock:
            stamp = file_stamp(key[0])
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                return entry[1]
            self._entries.pop(key, None)  # a stale model must not hold memory while the new one loads
            model = load()
            self._entries[key] = (stamp, model)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return model


def cache_contents() -> dict[str, list[tuple]]:
    """What every model cache alive holds: ``{cache name: [(real path, *settings), ...]}``.

    Tells, without loading anything, which models stay in memory between runs (the soak test checks that each
    model is held once)."""
    return {cache.name: cache.keys() for cache in sorted(_ALL_CACHES, key=lambda c: c.name)}
