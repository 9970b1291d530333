"""Measuring every image of a comparison once: metric *parts* (each a model and what it gives), per-image or
per-input units, the cache that keeps each unit's result, and the processes of a sharded run.

A part measures a list of units and returns one :class:`Measurement` per unit: per image (CLIP score, Inception
features, object similarity, expansion) or per input (LPIPS diversity between the images of one input's seeds).
Its cache key is the part's name and identity (model files, settings) and the digests of the files of the unit, so a
part added later, or another reference set, measures only what is new. Under ``torchrun`` / ``accelerate launch``
each unit belongs to one process (:func:`models.runs.ranks.owner` of its key); the main process reads every result
from the cache once all are done.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol, Sequence

from ...runs.atomic import write_json_atomically
from .cache import Measurement, MeasurementCache, file_digest, item_key

log = logging.getLogger("salient_background")

FAILED = "failed"


@dataclass(frozen=True)
class ImageJob:
    """One generated image (or, for the reference set, one real photo: ``run`` = ``reference``, no mask)."""

    run: str
    input_id: str
    seed: int
    image: str
    mask: str = ""  # the input's object mask (white = object)
    photo: str = ""  # the input photo as framed for generation
    prompt: str = ""


class MetricPart(Protocol):
    name: str  # what --metrics names and the cache's folder
    per_input: bool  # True: a unit is all the images of one input of one run
    identity: dict  # models and settings that determine the result

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]: ...


class Digests:
    """File digests, each file read once per process."""

    def __init__(self):
        self._known: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if not path:
            return ""
        if path not in self._known:
            self._known[path] = file_digest(path)
        return self._known[path]


def units_of(part: MetricPart, jobs: Sequence[ImageJob]) -> list[list[ImageJob]]:
    if not part.per_input:
        return [[job] for job in jobs]
    grouped: dict = {}
    for job in jobs:
        grouped.setdefault((job.run, job.input_id), []).append(job)
    return [sorted(group, key=lambda j: j.seed) for _, group in sorted(grouped.items())]


def unit_key(part: MetricPart, unit: Sequence[ImageJob], digest: Callable[[str], str]) -> str:
    return item_key(part.name, part.identity,
                    [(digest(j.image), digest(j.mask), digest(j.photo), j.prompt) for j in unit])


@dataclass
class PartResults:
    """What one part gave: {unit key: measurement}, the units by key, and the failures {unit key: reason}."""

    part: MetricPart
    units: dict
    results: dict
    failed: dict


def measure_part(part: MetricPart, jobs: Sequence[ImageJob], cache: MeasurementCache, ranks, *, digest: Digests,
                 batch_size: int = 8, on_done: Optional[Callable[[int], None]] = None) -> PartResults:
    """Measure this process's share of ``jobs`` not cached yet, wait for the other processes, and return every
    unit's result (read from the cache). A unit that fails is retried alone; if it fails again its reason is
    recorded (``<cache>/failed/<part>/<key>.json``) and it is left out."""
    units = {}
    for unit in units_of(part, jobs):
        units[unit_key(part, unit, digest)] = unit
    mine = [k for k in sorted(units) if ranks.owns(k) and cache.get(part.name, k) is None]
    for start in range(0, len(mine), max(1, batch_size)):
        chunk = mine[start:start + batch_size]
        _measure_chunk(part, chunk, units, cache)
        if on_done is not None:
            on_done(len(chunk))
    ranks.barrier()
    results, failed = {}, {}
    for key in sorted(units):
        got = cache.get(part.name, key)
        if got is not None:
            results[key] = got
        else:
            failed[key] = _failure_reason(cache, part, key)
    return PartResults(part, units, results, failed)


def _failure_path(cache: MeasurementCache, part: MetricPart, key: str) -> str:
    return os.path.join(cache.folder, FAILED, part.name, key + ".json")


def _failure_reason(cache: MeasurementCache, part: MetricPart, key: str) -> str:
    try:
        with open(_failure_path(cache, part, key), encoding="utf-8") as fh:
            return json.load(fh)["reason"]
    except (OSError, ValueError, KeyError):
        return "not measured"


def _measure_chunk(part: MetricPart, keys: list[str], units: dict, cache: MeasurementCache) -> None:
    from ...errors import UserFacingError

    try:
        results = part.measure([units[k] for k in keys])
    except (UserFacingError, OSError, ValueError) as exc:
        if len(keys) > 1:  # find the bad unit: the others are measured alone
            for key in keys:
                _measure_chunk(part, [key], units, cache)
            return
        path = _failure_path(cache, part, keys[0])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomically(path, {"part": part.name, "images": [j.image for j in units[keys[0]]], "reason": str(exc)})
        log.warning("%s: %s could not be measured: %s", part.name, units[keys[0]][0].image, exc)
        return
    for key, result in zip(keys, results):
        cache.put(part.name, key, result)
        failure = _failure_path(cache, part, key)
        if os.path.exists(failure):
            os.remove(failure)


def per_job(results: PartResults) -> dict:
    """{(run, input id, seed): measurement} of a per-image part; {(run, input id): measurement} of a per-input one."""
    out = {}
    for key, measurement in results.results.items():
        unit = results.units[key]
        out[(unit[0].run, unit[0].input_id) if results.part.per_input else (unit[0].run, unit[0].input_id, unit[0].seed)] = measurement
    return out


def failed_images(all_results: Iterable[PartResults]) -> list[dict]:
    """Every failure as {part, images, reason}, sorted."""
    out = []
    for res in all_results:
        for key, reason in sorted(res.failed.items()):
            out.append({"metric": res.part.name, "images": [j.image for j in res.units[key]], "reason": reason})
    return sorted(out, key=lambda f: (f["images"], f["metric"]))
