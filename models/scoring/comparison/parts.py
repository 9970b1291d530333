"""The metric parts of the comparison (see ``measure.py``): each wraps one measuring model behind the same small
interface, so the table code never depends on how a metric is computed.

* :class:`ExpansionPart`: the object-expansion score (``models/scoring/expansion.py``, SAM), unchanged;
  per image, ``expansion_relative``.
* :class:`InceptionPart`: per image, the FID Inception's 2048-d pool features (``inception``), from which FID and
  KID are computed for any set of images afterwards.
* :class:`ClipPart`: per image, the CLIP score against the input's prompt (``clip_score``).
* :class:`ObjectSimilarityPart`: per image, the object's DINOv2 similarity to the input photo's
  (``object_similarity``).
* :class:`LpipsPart`: per input, the LPIPS diversity between its seeds (``lpips_diversity``,
  ``lpips_diversity_background``).

The metrics themselves are ``models/scoring/metrics/`` (definitions: docs/metrics.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .cache import Measurement
from .measure import ImageJob

# what --metrics names -> the part that measures it
METRIC_PARTS = {"expansion": "expansion", "fid": "inception", "kid": "inception", "clip_score": "clip",
                "lpips_diversity": "lpips", "object_similarity": "object_similarity"}


def parse_metrics(text: Optional[str]) -> list[str]:
    """The metrics named by ``--metrics`` (comma-separated), in the table's order; [] = every one available."""
    from ...errors import InputError

    if not text:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRIC_PARTS]
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(METRIC_PARTS)}")
    return [n for n in METRIC_PARTS if n in names]


@dataclass
class Readers:
    """How the command reads files: ``image(path)`` -> [1,H,W,3] in 0..1, ``mask(path)`` -> [1,H,W] (1 = object)."""

    image: Callable[[str], torch.Tensor]
    mask: Callable[[str], torch.Tensor]


def _images(readers: Readers, units, attr: str = "image") -> list[torch.Tensor]:
    return [readers.image(getattr(unit[0], attr))[0] for unit in units]


@dataclass
class ExpansionPart:
    """SAM prompted inside the input's object mask (``score_expansion``), the evaluate command's settings."""

    sam: object  # the SAM model
    readers: Readers
    points: int = 8
    seed: int = 0
    mask_choice: str = "auto"
    sam_identity: dict = field(default_factory=dict)  # the SAM file (name, size, variant)
    name: str = "expansion"
    per_input: bool = False

    @property
    def identity(self) -> dict:
        return {"sam": self.sam_identity, "points": self.points, "seed": self.seed, "mask_choice": self.mask_choice}

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]:
        from ..expansion import score_expansion

        out = []
        for (job,) in units:
            image, mask = self.readers.image(job.image), self.readers.mask(job.mask)
            score = score_expansion(self.sam, image, mask, points=self.points, seed=self.seed,
                                    mask_choice=self.mask_choice).scores[0]
            out.append(Measurement({"expansion_relative": score.expansion_relative}))
        return out


@dataclass
class InceptionPart:
    network: object  # metrics.InceptionFeatures
    readers: Readers
    name: str = "inception"
    per_input: bool = False

    @property
    def identity(self) -> dict:
        return {"model": _file_identity(self.network.path)}

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]:
        features = self.network(_images(self.readers, units), batch_size=len(units))
        return [Measurement(features={"inception": f.numpy()}) for f in features]


@dataclass
class ClipPart:
    scorer: object  # metrics.ClipScorer
    readers: Readers
    name: str = "clip"
    per_input: bool = False

    @property
    def identity(self) -> dict:
        return {"model": self.scorer.variant}

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]:
        scores = self.scorer.scores(_images(self.readers, units), [unit[0].prompt for unit in units])
        return [Measurement({"clip_score": float(s)}) for s in scores]


@dataclass
class ObjectSimilarityPart:
    encoder: object  # metrics.ObjectEncoder
    readers: Readers
    name: str = "object_similarity"
    per_input: bool = False

    @property
    def identity(self) -> dict:
        return {"model": self.encoder.variant}

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]:
        from ..metrics import object_similarity_from_embeddings

        out = []
        for (job,) in units:  # photo and image of one input share a mask; sizes may differ between inputs
            mask = self.readers.mask(job.mask)
            pair = torch.cat([self.readers.image(job.photo), self.readers.image(job.image)])
            emb = self.encoder.embeddings(pair, mask)
            out.append(Measurement({"object_similarity": float(object_similarity_from_embeddings(emb[:1], emb[1:])[0])}))
        return out


@dataclass
class LpipsPart:
    model: object  # metrics.LpipsModel
    readers: Readers
    backbone: str = ""
    name: str = "lpips"
    per_input: bool = True

    @property
    def identity(self) -> dict:
        return {"model": _file_identity(self.backbone)}

    def measure(self, units: list[list[ImageJob]]) -> list[Measurement]:
        from ..metrics import lpips_diversity

        out = []
        for unit in units:
            images = torch.cat([self.readers.image(job.image) for job in unit])
            d = lpips_diversity(self.model, images, self.readers.mask(unit[0].mask)[0])
            out.append(Measurement({"lpips_diversity": d.whole, "lpips_diversity_background": d.background}))
        return out


def _file_identity(path: str) -> dict:
    import os

    return {"file": os.path.basename(path), "bytes": os.path.getsize(path) if path and os.path.isfile(path) else None}


@dataclass
class BuiltParts:
    parts: list  # measured per image / per input
    feature_parts: list  # those whose features make set-level metrics (they also measure the reference set)
    set_metrics: list  # table.SetMetric
    missing: list  # "metric: why" of each metric left out


@dataclass
class PartSettings:
    """Where the metric models are and how the expansion score is taken (the evaluate command's options)."""

    readers: Readers
    sam_path: Optional[str] = None
    points: int = 8
    seed: int = 0
    mask_choice: str = "auto"
    models_dir: Optional[str] = None


def build_parts(selected: list, settings: PartSettings, device) -> BuiltParts:
    """The parts of the ``selected`` metrics ([] = every one whose model is found). A missing model leaves its
    metric out (named, with the download command) when all are wanted; asked for by name, it is an error."""
    from ...errors import UserFacingError
    from .table import fid_metric, kid_metric

    wanted = selected or list(METRIC_PARTS)
    built = BuiltParts([], [], [], [])
    for part_name in dict.fromkeys(METRIC_PARTS[m] for m in wanted):
        try:
            part = _load_part(part_name, settings, device)
        except UserFacingError as exc:
            if selected:
                raise
            names = [m for m in wanted if METRIC_PARTS[m] == part_name]
            built.missing.append(f"{', '.join(names)}: {exc}")
            continue
        built.parts.append(part)
        if part_name == "inception":
            built.feature_parts.append(part)
            if "fid" in wanted:
                built.set_metrics.append(fid_metric("inception", value=_fid_value))
            if "kid" in wanted:
                built.set_metrics.append(kid_metric("inception", value=_kid_value))
    return built


def _fid_value(x, reference) -> float:
    """The point FID by torchmetrics (models/scoring/metrics), from features or from given statistics."""
    from ..metrics import FeatureStatistics, feature_statistics, fid_from_features, fid_from_statistics
    from .table import GaussianStatistics

    if isinstance(reference, GaussianStatistics):
        return fid_from_statistics(feature_statistics(x), FeatureStatistics(reference.mu, reference.sigma, 0))
    return fid_from_features(x, reference)


def _kid_value(x, reference) -> float:
    import warnings

    from ..metrics import kid_from_features

    with warnings.catch_warnings():  # torchmetrics warns that KID keeps every feature: the features are given here
        warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
        return kid_from_features(x, reference)[0]


def _load_part(part_name: str, settings: PartSettings, device):
    from ...errors import InputError
    from ...model_files.model_paths import discover
    from .. import metrics

    if part_name == "expansion":
        from ...networks.sam import load_sam

        if not settings.sam_path:
            raise InputError("the expansion score needs SAM: give --sam (e.g. sam-vit-b after 'download sam-vit-b')")
        loaded = load_sam(settings.sam_path)
        return ExpansionPart(loaded.model.to(device), settings.readers, points=settings.points, seed=settings.seed,
                             mask_choice=settings.mask_choice,
                             sam_identity={**_file_identity(settings.sam_path), "variant": loaded.variant})
    metric = {"inception": "fid", "clip": "clip", "object_similarity": "object_similarity", "lpips": "lpips"}[part_name]
    path = metrics.find_metric_model(metric, discover(settings.models_dir))
    if part_name == "inception":
        return InceptionPart(metrics.load_inception(path, device), settings.readers)
    if part_name == "clip":
        return ClipPart(metrics.load_clip(path, device), settings.readers)
    if part_name == "object_similarity":
        return ObjectSimilarityPart(metrics.load_object_encoder(path, device), settings.readers)
    return LpipsPart(metrics.load_lpips(path, device), settings.readers, backbone=path)
