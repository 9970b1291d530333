"""The trainer's latent cache is rebuilt when its rows changed, not only its count or its first and last row (a
--skip-bad-rows run that skips other rows trains on other data), and caches of earlier versions stay usable."""
from __future__ import annotations

import json
from types import SimpleNamespace

from salient_background.training import caches


class _Dataset:
    def __init__(self, images):
        self.rows = [{"image": f"/data/{name}.png", "mask": f"/data/{name}_mask.png"} for name in images]
        self.config = SimpleNamespace(resolution=32, resize_to=40, latent_cache_crops=2, seed=7)

    def __len__(self):
        return len(self.rows)


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


def _open(tmp_path, images) -> bool:
    """Open the cache for these rows; True when what an earlier run encoded is still there."""
    config = SimpleNamespace(output_dir=str(tmp_path), base_model=str(tmp_path / "base"), base=None, vae=None)
    folder = caches._open_latent_cache(config, _Dataset(images), _OneProcess())
    kept = (tmp_path / caches.LATENT_CACHE_DIR / "row0.safetensors").exists()
    (tmp_path / caches.LATENT_CACHE_DIR / "row0.safetensors").write_bytes(b"encoded")
    assert folder == str(tmp_path / caches.LATENT_CACHE_DIR)
    return kept


def test_a_cache_is_kept_for_the_same_rows_and_rebuilt_for_other_rows_of_the_same_count(tmp_path):
    assert not _open(tmp_path, ["a", "b", "c", "d"])
    assert _open(tmp_path, ["a", "b", "c", "d"])
    assert not _open(tmp_path, ["a", "x", "c", "d"])  # same count, same first and last row: other data


def test_a_cache_recorded_without_the_rows_digest_is_kept(tmp_path):
    _open(tmp_path, ["a", "b", "c", "d"])
    path = tmp_path / caches.LATENT_CACHE_DIR / caches.LATENT_CACHE_CONFIG
    recorded = json.loads(path.read_text())
    del recorded[caches.ROWS_DIGEST]  # what earlier versions wrote
    path.write_text(json.dumps(recorded))
    assert _open(tmp_path, ["a", "b", "c", "d"])
    assert json.loads(path.read_text()) == recorded  # left as it was
