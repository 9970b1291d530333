"""The one model cache of the loaders: same file and settings hit, a replaced file or other settings load anew,
at most `size` models, and concurrent requests for one model load it once."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from salient_background.models.model_files.model_cache import ModelCache
from salient_background.nodes import comfy_glue, salient_nodes


class CountingLoader:
    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
            number = self.calls
        time.sleep(self.delay)
        return {"load": number}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"first version")
    return path


def test_same_file_and_settings_hit(weights):
    cache, load = ModelCache(size=2), CountingLoader()
    first = cache.get(str(weights), ("fast", torch.float32), load)
    assert cache.get(str(weights), ("fast", torch.float32), load) is first
    # another spelling of the same file (a symlink) is the same model
    link = weights.parent / "link.pth"
    os.symlink(weights, link)
    assert cache.get(str(link), ("fast", torch.float32), load) is first
    assert load.calls == 1


def test_other_settings_miss(weights):
    cache, load = ModelCache(size=4), CountingLoader()
    fp32 = cache.get(str(weights), ("fast", torch.float32, "cpu"), load)
    fp16 = cache.get(str(weights), ("fast", torch.float16, "cpu"), load)
    base = cache.get(str(weights), ("base", torch.float32, "cpu"), load)
    cuda = cache.get(str(weights), ("fast", torch.float32, "cuda:0"), load)
    assert len({id(fp32), id(fp16), id(base), id(cuda)}) == 4 and load.calls == 4
    assert cache.get(str(weights), ("fast", torch.float16, "cpu"), load) is fp16 and load.calls == 4


def test_a_replaced_file_is_loaded_anew(weights):
    cache, load = ModelCache(size=2), CountingLoader()
    old = cache.get(str(weights), (), load)
    stamp = os.stat(weights)
    weights.write_bytes(b"other version")  # same size: only the modification time tells
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    new = cache.get(str(weights), (), load)
    assert new is not old and new == {"load": 2}
    assert cache.get(str(weights), (), load) is new and load.calls == 2
    weights.write_bytes(b"a longer third version")  # same time, other size
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    assert cache.get(str(weights), (), load) == {"load": 3}


def test_at_most_size_models_least_recently_used_dropped_first(tmp_path):
    cache, load = ModelCache(size=2), CountingLoader()
    paths = []
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode())
        paths.append(str(tmp_path / name))
    a = cache.get(paths[0], (), load)
    cache.get(paths[1], (), load)
    assert cache.get(paths[0], (), load) is a  # a is now the most recently used
    cache.get(paths[2], (), load)  # drops b
    assert cache.get(paths[0], (), load) is a and load.calls == 3
    cache.get(paths[1], (), load)
    assert load.calls == 4


def test_concurrent_requests_for_one_model_load_it_once(weights):
    cache, load = ModelCache(size=2), CountingLoader(delay=0.2)
    start = threading.Barrier(6)
    results = []

    def ask():
        start.wait()
        results.append(cache.get(str(weights), ("fast",), load))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert load.calls == 1 and len(results) == 6 and all(r is results[0] for r in results)


def test_a_failed_load_caches_nothing(weights):
    cache = ModelCache(size=2)

    def broken():
        raise RuntimeError("truncated file")

    with pytest.raises(RuntimeError, match="truncated"):
        cache.get(str(weights), (), broken)
    load = CountingLoader()
    cache.get(str(weights), (), load)
    assert load.calls == 1


def test_a_missing_file_raises_before_loading(tmp_path):
    load = CountingLoader()
    with pytest.raises(FileNotFoundError):
        ModelCache().get(str(tmp_path / "gone.pth"), (), load)
    assert load.calls == 0


def test_salient_loader_keys_on_mode_precision_and_device(weights, monkeypatch):
    """The node's key: the resolved dtype (auto = fp32 on the CPU shares fp32's model), the mode and the device."""
    from salient_background.models.networks import salient

    loads = []

    def fake_load(path, mode, device, dtype):
        loads.append((mode, dtype))
        return type("Segmenter", (), {"network": torch.nn.Linear(1, 1)})()

    monkeypatch.setattr(salient, "load_salient_model", fake_load)
    monkeypatch.setattr(salient_nodes, "_MODELS", ModelCache(size=4))
    monkeypatch.setattr(comfy_glue, "torch_device", lambda: torch.device("cpu"))
    fp32 = salient_nodes.load_salient_model_cached(str(weights), "fast", "fp32")
    assert salient_nodes.load_salient_model_cached(str(weights), "fast", "auto") is fp32
    bf16 = salient_nodes.load_salient_model_cached(str(weights), "fast", "bf16")
    base = salient_nodes.load_salient_model_cached(str(weights), "base", "fp32")
    assert bf16 is not fp32 and base is not fp32
    assert loads == [("fast", torch.float32), ("fast", torch.bfloat16), ("base", torch.float32)]


def test_sam_loader_loads_a_model_once_for_concurrent_requests(weights, monkeypatch):
    from types import SimpleNamespace

    from salient_background.nodes import sam_nodes

    load = CountingLoader(delay=0.2)

    def fake_load_sam(path):
        load()
        return SimpleNamespace(model=torch.nn.Linear(1, 1), architecture=SimpleNamespace(describe=lambda: "fake"))

    monkeypatch.setattr(sam_nodes, "load_sam", fake_load_sam)
    monkeypatch.setattr(sam_nodes, "_MODELS", ModelCache(size=2), raising=False)
    start = threading.Barrier(4)
    handles = []

    def ask():
        start.wait()
        handles.append(sam_nodes.load_sam_cached(str(weights)))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert load.calls == 1 and len(handles) == 4 and all(h is handles[0] for h in handles)


def test_cache_contents_lists_what_every_named_cache_holds(weights, tmp_path):
    """What the ComfyUI soak reads from inside the server: each cache's (real path, *settings), oldest first; a
    replaced file keeps one entry; the node modules' caches are listed by name."""
    from salient_background.models.model_files.model_cache import cache_contents

    other = tmp_path / "other.pth"
    other.write_bytes(b"other")
    cache, load = ModelCache(size=2, name="test-contents"), CountingLoader()
    cache.get(str(weights), ("fast",), load)
    cache.get(str(other), ("fast",), load)
    cache.get(str(weights), ("fast",), load)  # a hit moves it to the end
    real = os.path.realpath
    assert cache_contents()["test-contents"] == [(real(other), "fast"), (real(weights), "fast")]
    weights.write_bytes(b"second version, longer")  # replaced on disk: reloaded, still one entry for the file
    cache.get(str(weights), ("fast",), load)
    assert load.calls == 3 and cache.keys() == [(real(other), "fast"), (real(weights), "fast")]
    assert {"salient", "sam"} <= set(cache_contents())
