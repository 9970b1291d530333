"""Image-quality metrics of the paper's table, beside the expansion score: FID and KID (Inception features),
CLIP score, LPIPS diversity and object similarity. Definitions: docs/metrics.md. Each model is read from a local
file found through the download registry; a missing one is a ``MetricModelMissing`` naming the download command."""
from .clip_score import ClipScorer, clip_score_from_embeddings, load_clip
from .fid_kid import FeatureStatistics, feature_statistics, fid_from_features, fid_from_statistics, kid_from_features
from .inception import FEATURE_DIM, InceptionFeatures, load_inception
from .lpips_diversity import LpipsDiversity, LpipsModel, load_lpips, lpips_diversity, lpips_pairs
from .model_files import (METRIC_MODELS, MetricModelMissing, MetricPackageMissing, available_metric_models,
                          find_metric_model)
from .object_similarity import ObjectEncoder, load_object_encoder, object_crops, object_similarity_from_embeddings

__all__ = [
    "ClipScorer", "clip_score_from_embeddings", "load_clip",
    "FeatureStatistics", "feature_statistics", "fid_from_features", "fid_from_statistics", "kid_from_features",
    "FEATURE_DIM", "InceptionFeatures", "load_inception",
    "LpipsDiversity", "LpipsModel", "load_lpips", "lpips_diversity", "lpips_pairs",
    "METRIC_MODELS", "MetricModelMissing", "MetricPackageMissing", "available_metric_models", "find_metric_model",
    "ObjectEncoder", "load_object_encoder", "object_crops", "object_similarity_from_embeddings",
]
