"""FID and KID from Inception features already computed (and cached per image), with torchmetrics.

* FID: ``||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))`` over the feature means and unbiased covariances
  (``N - 1``), in float64. From two feature sets it is torchmetrics' ``FrechetInceptionDistance`` fed the features
  through its ``feature=<module>`` argument (an identity module: the images were already turned into features); from
  statistics (e.g. a reference set computed once) it is torchmetrics' own formula, ``torchmetrics.image.fid.
  _compute_fid`` (the function ``FrechetInceptionDistance.compute`` calls; it takes the trace of the square root as
  the sum of the square roots of the eigenvalues of ``S_g S_r``).
* KID: torchmetrics' ``KernelInceptionDistance`` fed the features the same way: the unbiased MMD^2 with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size``
  features of each set (the size is lowered to the smaller set when it is larger); returns (mean, std). The subsets
  are drawn from a generator seeded with ``seed``, so a value is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ...runs.atomic import write_atomically
from .model_files import require_packages


class _GivenFeatures(torch.nn.Module):
    """torchmetrics' FID/KID accept any module as their feature extractor: this one receives features and returns
    them unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_features(features, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if tensor.ndim != 2:
        raise InputError(f"{what}: expected features [N, D], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < 2:
        raise InputError(f"{what}: FID and KID need at least 2 images per set, got {tensor.shape[0]}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{what}: features contain NaN or infinite values")
    return tensor.detach().cpu().double()


@dataclass
class FeatureStatistics:
    """Mean and unbiased covariance of a feature set (float64), and how many images made them."""

    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    count: int

    def save(self, path: str) -> None:
        """An ``.npz`` with ``mu``, ``sigma`` (pytorch-fid's key names) and ``count``, written atomically."""
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

        write_atomically(path, write)

    @classmethod
    def load(cls, path: str) -> "FeatureStatistics":
        """Statistics saved by :meth:`save`, or a pytorch-fid ``.npz`` (``mu``, ``sigma``; count unknown = 0)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
                count = int(data["count"]) if "count" in data.files else 0
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path!r} is not a statistics file (.npz with mu and sigma): {exc}") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise InputError(f"{path!r}: mu {mu.shape} and sigma {sigma.shape} do not form [D] and [D, D]")
        return cls(mu, sigma, count)


def feature_statistics(features) -> FeatureStatistics:
    """Mean and unbiased covariance of ``features`` [N, D], as torchmetrics' FID accumulates them."""
    f = _as_features(features, "features")
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return FeatureStatistics(mu.numpy(), sigma.numpy(), int(f.shape[0]))


def fid_from_statistics(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """FID between two sets given by their statistics (torchmetrics' formula, float64)."""
    require_packages("fid", "torchmetrics")
    from torchmetrics.image.fid import _compute_fid

    if a.mu.shape != b.mu.shape:
        raise InputError(f"statistics of different feature sizes: {a.mu.shape[0]} and {b.mu.shape[0]}")
    value = _compute_fid(torch.from_numpy(np.asarray(a.mu, np.float64)), torch.from_numpy(np.asarray(a.sigma, np.float64)),
                         torch.from_numpy(np.asarray(b.mu, np.float64)), torch.from_numpy(np.asarray(b.sigma, np.float64)))
    return float(value)


def fid_from_features(generated, reference) -> float:
    """FID between two feature sets [N, D] and [M, D] (torchmetrics' ``FrechetInceptionDistance``)."""
    require_packages("fid", "torchmetrics")
    from torchmetrics.image.fid import FrechetInceptionDistance

    g, r = _as_features(generated, "generated features"), _as_features(reference, "reference features")
    if g.shape[1] != r.shape[1]:
        raise InputError(f"features of different sizes: {g.shape[1]} and {r.shape[1]}")
    # the features are complete where this is called: never gather torchmetrics' states across processes (a caller
    # alone in a process group, such as the trainer's validation on the main process, would wait forever)
    metric = FrechetInceptionDistance(feature=_GivenFeatures(g.shape[1]), sync_on_compute=False).double()
    metric.update(r, real=True)
    metric.update(g, real=False)
    return float(metric.compute())


def kid_from_features(generated, reference, *, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                      gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets (torchmetrics' ``KernelInceptionDistance``)."""
    require_packages("fid", "torchmetrics")
    from torchmetrics.image.kid import KernelInceptionDistance

    g, r = _as_features(generated, "generated features"), _as_features(reference, "reference features")
    if g.shape[1] != r.shape[1]:
        raise InputError(f"features of different sizes: {g.shape[1]} and {r.shape[1]}")
    size = min(subset_size, g.shape[0], r.shape[0])
    metric = KernelInceptionDistance(feature=_GivenFeatures(g.shape[1]), subsets=subsets, subset_size=size,
                                     degree=degree, gamma=gamma, coef=coef, sync_on_compute=False)
    metric.update(r, real=True)
    metric.update(g, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws subsets with torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)  # std is NaN for one subset

