"""The comparison table's paired statistics (models/scoring/comparison/stats.py).

* Over 200 synthetic datasets with a known effect, the bootstrap 95 % intervals of the expansion ratio and of a
  paired difference hold the true value about 95 % of the time.
* The redrawn FID and KID equal an independent computation (scipy's sqrtm Fréchet distance; the unbiased MMD
  formula written out) on the same features, with every input drawn once and with inputs drawn twice (the features
  then duplicated explicitly).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from salient_background.models.scoring.comparison import stats

DATASETS = 200


def _coverage(make, true_value, statistic) -> float:
    rng = np.random.default_rng(1234)
    hits = 0
    for k in range(DATASETS):
        a, b = make(rng)
        iv = statistic(a, b, resamples=1000, seed=k)
        hits += iv.low <= true_value <= iv.high
    return hits / DATASETS


def test_ratio_interval_covers_the_true_ratio():
    # baseline expansion ~ exponential (mean 0.2); the model expands each object 3x less times a mean-1 noise:
    # population ratio of means = 3 exactly
    def make(rng):
        a = rng.exponential(0.2, size=60)
        return a, a * rng.uniform(0.5, 1.5, size=60) / 3.0

    coverage = _coverage(make, 3.0, stats.ratio_of_means)
    assert 0.89 <= coverage <= 0.99, coverage


def test_difference_interval_covers_the_true_shift_and_flags_it():
    def make(rng):
        a = rng.normal(30.0, 2.0, size=50)
        return a, a + 0.4 + rng.normal(0.0, 1.0, size=50)

    coverage = _coverage(make, 0.4, stats.mean_difference)
    assert 0.89 <= coverage <= 0.99, coverage
    rng = np.random.default_rng(7)
    a = rng.normal(30.0, 2.0, size=400)
    moved = stats.mean_difference(a, a + 0.4 + rng.normal(0, 1, 400))
    still = stats.mean_difference(a, a + rng.normal(0, 1, 400))
    assert moved.excludes(0.0) and moved.low > 0
    assert still.low < 0 < still.high and not still.excludes(0.0)


def test_bootstrap_is_reproducible_and_skips_undefined_inputs():
    a = np.array([0.1, 0.3, np.nan, 0.2, 0.5])
    b = np.array([0.05, 0.1, 0.2, np.nan, 0.1])
    first, second = stats.ratio_of_means(a, b, seed=3), stats.ratio_of_means(a, b, seed=3)
    assert first == second
    assert first.value == pytest.approx((0.1 + 0.3 + 0.5) / (0.05 + 0.1 + 0.1))
    lone = stats.ratio_of_means([0.2], [0.1])
    assert lone.value == pytest.approx(2.0) and np.isnan(lone.low)


def _scipy_fid(x, ref):
    mu1, mu2 = x.mean(0), ref.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(ref, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _mmd(x, y):
    kxx, kyy, kxy = (stats.polynomial_kernel(p, q) for p, q in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()


@pytest.mark.parametrize("n_inputs,dims", [(12, 16), (30, 6)])  # fewer images than dims (Gram path), and more
def test_redrawn_fid_and_kid_equal_independent_computations(n_inputs, dims):
    rng = np.random.default_rng(0)
    image_input = np.repeat(np.arange(n_inputs), 2)  # two seeds per input
    x = rng.normal(size=(len(image_input), dims)) + 0.3
    ref = rng.normal(size=(40, dims)) * 1.2
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    draws = np.stack([np.arange(n_inputs), rng.integers(0, n_inputs, n_inputs)])
    fid = stats.fid_bootstrap(x, image_input, n_inputs, mu, sigma)(draws)
    kid = stats.kid_bootstrap(x, image_input, n_inputs, ref)(draws)
    for k, row in enumerate(draws):
        drawn = np.concatenate([x[image_input == i] for i in row])
        assert fid[k] == pytest.approx(_scipy_fid(drawn, ref), rel=1e-6, abs=1e-8)
        assert kid[k] == pytest.approx(_mmd(drawn, ref), rel=1e-9, abs=1e-12)
    assert stats.weighted_fid(x, np.ones(len(x)), mu, sigma) == pytest.approx(_scipy_fid(x, ref), rel=1e-6)
    assert stats.weighted_fid(ref, np.ones(len(ref)), mu, sigma) == pytest.approx(0.0, abs=1e-6)
