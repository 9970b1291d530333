"""Paired statistics of a comparison: bootstrap confidence intervals over the inputs.

Every statistic compares a model with the baseline on the *same* inputs, so the bootstrap resamples inputs, not
images: one resample draws ``n`` input indices with replacement (``numpy.random.default_rng(seed)``, the same draws
for the baseline and the model), and every statistic is recomputed on the drawn inputs. The interval is the
percentile interval (2.5 % and 97.5 % quantiles of the resampled statistic, ``numpy.quantile``'s default linear
interpolation).

* Expansion ratio: ``mean(baseline) / mean(model)`` of the per-input expansion (how many times less the model
  expands the object); undefined inputs (an empty object mask in either run) are left out of both means.
* A per-input metric (CLIP score, object similarity, LPIPS diversity, ...): the paired difference
  ``mean(model) - mean(baseline)``; it *moved* when its interval excludes 0.
* A set-level metric (FID, KID): recomputed from the cached features of the drawn inputs' images, the reference
  set held fixed; then the same difference and interval. :func:`fid_bootstrap` and :func:`kid_bootstrap` compute
  the resampled values without re-forming a ``d x d`` covariance per draw (see their docs).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95


@dataclass
class Interval:
    """A point estimate with its bootstrap interval (NaN bounds when there are fewer than two inputs)."""

    value: float
    low: float
    high: float

    def excludes(self, x: float) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high)) and not (self.low <= x <= self.high)

    def as_dict(self) -> dict:
        return asdict(self)


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[resamples, n]`` input indices drawn with replacement; the same ``(n, resamples, seed)`` gives the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(value: float, replicates: np.ndarray, level: float = LEVEL) -> Interval:
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size < 2:
        return Interval(float(value), math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Interval(float(value), float(low), float(high))


def _paired(baseline: Sequence[float], model: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(model, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two vectors of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def ratio_of_means(baseline: Sequence[float], model: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED, level: float = LEVEL) -> Interval:
    """``mean(baseline) / mean(model)`` over the inputs defined in both, with its paired bootstrap interval."""
    a, b = _paired(baseline, model)
    if a.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = a.mean() / b.mean()
        if a.size < 2:
            return Interval(float(value), math.nan, math.nan)
        idx = resample_indices(a.size, resamples, seed)
        reps = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    return percentile_interval(value, reps, level)


def mean_difference(baseline: Sequence[float], model: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED, level: float = LEVEL) -> Interval:
    """``mean(model) - mean(baseline)`` over the inputs defined in both, with its paired bootstrap interval."""
    a, b = _paired(baseline, model)
    if a.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    diff = b - a
    if diff.size < 2:
        return Interval(float(diff.mean()), math.nan, math.nan)
    idx = resample_indices(diff.size, resamples, seed)
    return percentile_interval(diff.mean(), diff[idx].mean(axis=1), level)


def set_level_difference(baseline_stat: Callable[[np.ndarray], np.ndarray], model_stat: Callable[[np.ndarray], np.ndarray],
                         n_inputs: int, baseline_value: float, model_value: float, *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL) -> Interval:
    """The difference ``model - baseline`` of a set-level metric. ``*_stat(idx)`` takes ``[resamples, n_inputs]``
    drawn input indices and returns the metric recomputed on each draw (e.g. :func:`fid_bootstrap`)."""
    value = model_value - baseline_value
    if n_inputs < 2:
        return Interval(float(value), math.nan, math.nan)
    idx = resample_indices(n_inputs, resamples, seed)
    return percentile_interval(value, np.asarray(model_stat(idx)) - np.asarray(baseline_stat(idx)), level)


# ---------------------------------------------------------------------------------------------- FID / KID redrawn
def _input_weights(idx: np.ndarray, image_input: np.ndarray, n_inputs: int) -> np.ndarray:
    """Per-image weights of each draw: how many times the draw took the image's input (``[resamples, n_images]``)."""
    counts = np.stack([np.bincount(row, minlength=n_inputs) for row in idx])
    return counts[:, image_input].astype(np.float64)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def weighted_fid(features: np.ndarray, weights: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    """The Fréchet distance between the weighted Gaussian of ``features`` and the reference's, weights = how many
    times each image is drawn (all ones: the plain FID, unbiased covariance). ``tr sqrt(S_r^1/2 S S_r^1/2)`` is
    taken from the eigenvalues of the ``n x n`` Gram form ``W^1/2 Xc S_r Xc^T W^1/2 / (N-1)`` when there are fewer
    images than feature dimensions (the nonzero eigenvalues are the same), else of the ``d x d`` form."""
    return float(_fid_draws(features, weights[None], ref_mu, ref_sigma)[0])


def _fid_draws(features: np.ndarray, weights: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    ref_mu, ref_sigma = np.asarray(ref_mu, np.float64), np.asarray(ref_sigma, np.float64)
    out = np.empty(len(weights))
    small = n <= d
    if small:
        gram_ref = x @ ref_sigma @ x.T  # K = X S_r X^T, once
        gram = x @ x.T
        x_mu_ref = x @ ref_mu
    else:
        root_ref = _sqrtm_psd(ref_sigma)
    for k, w in enumerate(weights):
        total = w.sum()
        mu = w @ x / total
        if small:
            # rows centred by the weighted mean: H K H^T with H = I - 1 w^T / N, without forming X - mu
            kw = gram_ref @ w / total
            centred_ref = gram_ref - kw[:, None] - kw[None, :] + w @ kw / total
            gw = gram @ w / total
            centred = gram - gw[:, None] - gw[None, :] + w @ gw / total
            root_w = np.sqrt(w)
            lam = np.linalg.eigvalsh(root_w[:, None] * centred_ref * root_w[None, :]) / (total - 1)
            trace_sigma = float(w @ np.diag(centred)) / (total - 1)
            mean_term = float(w @ gram @ w) / total ** 2 - 2 * float(w @ x_mu_ref) / total + float(ref_mu @ ref_mu)
        else:
            xc = x - mu
            sigma = (xc * w[:, None]).T @ xc / (total - 1)
            lam = np.linalg.eigvalsh(root_ref @ sigma @ root_ref)
            trace_sigma = float(np.trace(sigma))
            mean_term = float(((mu - ref_mu) ** 2).sum())
        out[k] = mean_term + trace_sigma + float(np.trace(ref_sigma)) - 2 * float(np.sqrt(np.clip(lam, 0, None)).sum())
    return out


def fid_bootstrap(features: np.ndarray, image_input: Sequence[int], n_inputs: int, ref_mu: np.ndarray,
                  ref_sigma: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``stat(idx)`` for :func:`set_level_difference`: the FID of each draw of inputs (an input drawn twice counts
    its images twice), the reference statistics fixed."""
    image_input = np.asarray(image_input)
    return lambda idx: _fid_draws(features, _input_weights(idx, image_input, n_inputs), ref_mu, ref_sigma)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``(x . y / d + 1)^3`` (Bińkowski et al.; torchmetrics' default)."""
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + 1.0) ** 3


def kid_bootstrap(features: np.ndarray, image_input: Sequence[int], n_inputs: int,
                  reference: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``stat(idx)``: the unbiased MMD² (polynomial kernel) between each draw's images and the whole reference set,
    from kernel matrices computed once (a drawn image's kernel entries are looked up, not recomputed)."""
    image_input = np.asarray(image_input)
    k_xx = polynomial_kernel(features, features)
    k_xr = polynomial_kernel(features, reference)
    k_rr = polynomial_kernel(reference, reference)
    m = len(reference)
    rr_term = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
    by_input = [np.flatnonzero(image_input == i) for i in range(n_inputs)]

    def stat(idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for k, row in enumerate(idx):
            images = np.concatenate([by_input[i] for i in row])
            n = len(images)
            block = k_xx[np.ix_(images, images)]
            xx_term = (block.sum() - np.trace(block)) / (n * (n - 1))
            out[k] = xx_term + rr_term - 2 * k_xr[images].mean()
        return out

    return stat


def unbiased_mmd2(x: np.ndarray, reference: np.ndarray) -> float:
    """The full-set unbiased MMD² with KID's kernel (what :func:`kid_bootstrap` redraws)."""
    n = len(x)
    return float(kid_bootstrap(x, np.arange(n), n, reference)(np.arange(n)[None])[0])
