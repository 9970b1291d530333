"""FID and KID (models/scoring/metrics): the FID Inception read from a random file in the FID weights layout through
the loader a user runs, checked against independent computations (scipy's sqrtm Frechet distance, the unbiased MMD
in numpy) and against a second FID implementation (pytorch-fid) on the same weights."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from salient_background.models.errors import CheckpointError, InputError
from salient_background.models.scoring import metrics
from sb_testkit.metric_models import INCEPTION_FILE, fid_inception_state_dict, write_fid_inception


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    return write_fid_inception(str(tmp_path_factory.mktemp("metrics")), seed=0)


@pytest.fixture(scope="module")
def inception(inception_path):
    return metrics.load_inception(inception_path)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """8-bit-exact random images with structure (smooth blobs + noise), [n, size, size, 3]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noisy = (0.7 * smooth + 0.3 * torch.rand(n, 3, size, size, generator=gen)).permute(0, 2, 3, 1)
    return (noisy * 255).round() / 255


# ---------------------------------------------------------------------------------------------- independent formulas
def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def numpy_unbiased_mmd(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    d = x.shape[1]
    k = lambda p, q: (p @ q.T / d + coef) ** degree  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _synthetic(seed: int, n: int = 300, d: int = 64, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) * scale) @ mixing + shift


# ---------------------------------------------------------------------------------------------- FID
def test_fid_equals_scipy_frechet_distance_on_the_same_features():
    a, b = _synthetic(0), _synthetic(1, shift=0.3, scale=1.2)
    expected = scipy_frechet(a, b)
    assert expected > 1.0
    assert metrics.fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    stats_a, stats_b = metrics.feature_statistics(a), metrics.feature_statistics(b)
    assert metrics.fid_from_statistics(stats_a, stats_b) == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(stats_a.sigma, np.cov(a, rowvar=False), rtol=1e-12, atol=1e-14)
    assert stats_a.count == 300


def test_reference_statistics_round_trip_and_pytorch_fid_files(tmp_path):
    a, b = _synthetic(2), _synthetic(3, shift=0.5)
    stats = metrics.feature_statistics(b)
    stats.save(str(tmp_path / "ref.npz"))
    loaded = metrics.FeatureStatistics.load(str(tmp_path / "ref.npz"))
    assert loaded.count == 300 and np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    assert metrics.fid_from_statistics(metrics.feature_statistics(a), loaded) == pytest.approx(
        metrics.fid_from_features(a, b), rel=1e-9)
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # pytorch-fid's --save-stats layout
    assert metrics.FeatureStatistics.load(str(tmp_path / "pytorch_fid.npz")).count == 0
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a statistics file"):
        metrics.FeatureStatistics.load(str(tmp_path / "bad.npz"))
    with pytest.raises(InputError, match="at least 2"):
        metrics.fid_from_features(a[:1], b)


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero(inception):
    features = inception(_images(4, 96, seed=1))
    assert features.shape == (4, metrics.FEATURE_DIM) and features.dtype == torch.float32
    assert float(features.std(dim=0).max()) > 0  # the images give different features
    # zero up to the rounding of the matrix square root (4 images: the covariance has rank 3 in 2048 dimensions)
    trace = float(np.trace(metrics.feature_statistics(features).sigma))
    assert abs(metrics.fid_from_features(features, features)) < 1e-4 * trace


def test_features_are_per_image_whatever_the_batch(inception):
    images = _images(3, 80, seed=3)
    together = inception(images, batch_size=3)
    alone = torch.cat([inception(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    mixed = inception([images[0], _images(1, 120, seed=4)[0], images[1]], batch_size=8)  # sizes differ
    torch.testing.assert_close(mixed[[0, 2]], together[:2], rtol=1e-5, atol=1e-5)


def test_features_are_torch_fidelitys_own_at_any_size(inception_path, inception):
    """Same weights in torch-fidelity's extractor itself: its TensorFlow-compatible resize and scaling are ours."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=inception_path)
    images = _images(2, 120, seed=7)
    with torch.no_grad():
        expected = theirs((images.permute(0, 3, 1, 2) * 255).round().to(torch.uint8))[0]
    torch.testing.assert_close(inception(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_second_implementation_pytorch_fid_agrees(inception_path, inception, monkeypatch):
    """pytorch-fid's own Inception (its FID blocks) on the same random file, and its scipy Frechet distance."""
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pf_inception

    state = torch.load(inception_path, map_location="cpu", weights_only=True)
    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", lambda *a, **k: state)  # no download
    theirs = pf_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    a, b = _images(4, 299, seed=5), _images(4, 299, seed=6)  # 299 px: no resize on either side

    def their_features(images):
        x = (images.permute(0, 3, 1, 2) * 255 - 128) / 128  # torch-fidelity's scaling of 8-bit values
        with torch.no_grad():
            return theirs(x)[0][:, :, 0, 0].double().numpy()

    fa, fb = their_features(a), their_features(b)
    ours_a, ours_b = inception(a), inception(b)
    np.testing.assert_allclose(ours_a.numpy(), fa, rtol=1e-4, atol=1e-4)  # all 2048 features
    # the Frechet distance of each implementation on its own features; the first 512 dimensions keep the two matrix
    # square roots (scipy's sqrtm, torchmetrics' eigenvalues) to a second each -- at 2048 they take most of a minute
    fa, fb, ours_a, ours_b = fa[:, :512], fb[:, :512], ours_a[:, :512], ours_b[:, :512]
    expected = fid_score.calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0),
                                                    np.cov(fb, rowvar=False))
    assert expected > 1e-3 * float(np.trace(np.cov(fa, rowvar=False)))  # well above the rounding seen at zero
    assert metrics.fid_from_features(ours_a, ours_b) == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------------------------------- KID
def test_kid_equals_the_unbiased_mmd_with_the_cubic_polynomial_kernel():
    a, b = _synthetic(4, n=40), _synthetic(5, n=40, shift=0.2)
    expected = numpy_unbiased_mmd(a, b)
    # one subset of every feature: torchmetrics' subset is a permutation of the whole set, and MMD ignores order
    mean, _ = metrics.kid_from_features(a, b, subsets=1, subset_size=40)
    assert mean == pytest.approx(expected, rel=1e-9)
    # a subset size above the set size is lowered to it; the value is reproducible for a seed
    assert metrics.kid_from_features(a, b, subsets=3, subset_size=1000)[0] == pytest.approx(expected, rel=1e-9)
    first = metrics.kid_from_features(a, b, subsets=10, subset_size=20, seed=7)
    assert first == metrics.kid_from_features(a, b, subsets=10, subset_size=20, seed=7)
    assert first != metrics.kid_from_features(a, b, subsets=10, subset_size=20, seed=8) and first[1] > 0


# ---------------------------------------------------------------------------------------------- loading
def test_missing_inception_names_the_download_command(tmp_path):
    with pytest.raises(metrics.MetricModelMissing) as info:
        metrics.load_inception(str(tmp_path / INCEPTION_FILE))
    assert info.value.metric == "fid"
    assert info.value.download_command == "python -m salient_background download metrics-inception"
    assert info.value.download_command in str(info.value) and str(tmp_path) in str(info.value)


def test_a_file_that_is_not_the_fid_inception_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="FID weights layout"):
        metrics.load_inception(str(wrong))
    state = fid_inception_state_dict(seed=1)
    state["fc.weight"] = state["fc.weight"][:10]  # right names, a wrong shape
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        metrics.load_inception(str(tmp_path / "shape.pth"))


class _Payload:
    def __reduce__(self):
        return (open, (os.environ["SB_PAYLOAD_MARK"], "w"))


def test_a_pickle_that_runs_code_is_refused_before_torch_fidelity_reads_it(tmp_path, monkeypatch):
    mark = tmp_path / "code_ran"
    monkeypatch.setenv("SB_PAYLOAD_MARK", str(mark))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"Conv2d_1a_3x3.conv.weight": _Payload()}, fh)
    with pytest.raises(CheckpointError):
        metrics.load_inception(str(path))
    assert not mark.exists()


_ALONE_IN_GROUP = r'''
import datetime, sys
import numpy as np
import torch.distributed as dist
from salient_background.models.scoring import metrics
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=20))
if rank == 0:  # the main process computes alone, as the trainer's validation does; rank 1 never joins a sync
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 0.5
    print("FID", metrics.fid_from_features(a, b), "KID", metrics.kid_from_features(a, b, subsets=3)[0], flush=True)
dist.barrier()
dist.destroy_process_group()
'''


def test_fid_and_kid_computed_by_one_process_of_a_group_do_not_wait_for_the_others(tmp_path):
    """torchmetrics gathers its states across a process group by default: the trainer's validation, which runs on the
    main process only, then waited forever for processes that never compute."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "alone.py"
    script.write_text(_ALONE_IN_GROUP)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), port], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:]
    assert "FID" in outs[0][0] and "KID" in outs[0][0]
