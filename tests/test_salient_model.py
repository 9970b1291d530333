"""InSPyReNet loading and the salient-mask API on full-size random checkpoints in the official layout.

Forward passes run in fast mode on small inputs (dynamic resize keeps the network input at 32-64 px) except
where the behaviour under test needs the real resize (large input, static policy).
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from salient_background.models.errors import CheckpointError, InputError
from salient_background.models.networks.inspyrenet import OFFICIAL_KEY_COUNT, InSPyReNet
from salient_background.models.precision import resolve_dtype
from salient_background.models.networks.salient import (
    EMPTY_THRESHOLD,
    MODES,
    SalientSegmenter,
    dynamic_input_size,
    load_salient_model,
    network_input_size,
    preprocess,
)
from sb_testkit.inspyrenet import (
    cached_random_state_dict,
    non_inspyrenet_state_dict,
    res2net_variant_state_dict,
    save_pth,
    save_safetensors,
    save_truncated,
    synthetic_photo,
)
from sb_testkit.salient_golden import WEIGHT_SEED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state():
    return cached_random_state_dict(WEIGHT_SEED, MODES["fast"])


@pytest.fixture(scope="module")
def pth_path(state, tmp_path_factory):
    """The one checkpoint the module shares; each test writes its own variants in its tmp_path (removed on
    success: each is ~350 MB)."""
    return save_pth(state, tmp_path_factory.mktemp("salient_ckpts") / "ckpt_fast.pth")


@pytest.fixture(scope="module")
def model(pth_path):
    return load_salient_model(pth_path, mode="fast", device="cpu")


def photo(width, height, seed=0) -> torch.Tensor:
    return torch.from_numpy(synthetic_photo(width, height, seed)).float().div(255.0)


def assert_same_weights(network, state):
    loaded = network.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------------------ layout & loading
def test_official_layout_facts(state):
    assert len(state) == OFFICIAL_KEY_COUNT == 1625
    assert 90_000_000 < sum(v.numel() for v in state.values()) < 92_000_000
    assert "backbone.layers.2.blocks.17.attn.relative_position_index" in state
    assert "attention0.lthreshold" in state and "attention2.threshold" in state
    assert not any("kernel" in k for k in state)  # the pyramid kernel is derived, not stored
    # base_size changes internals (SICA pooling grid) but not the key set or shapes
    assert {k: v.shape for k, v in InSPyReNet(1024).state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_pyramid_kernel_is_opencv_gaussian():
    kernel = InSPyReNet(384).image_pyramid.kernel[0, 0].double()
    # cv2.getGaussianKernel(7, 1) (sigma > 0 branch), outer product
    k1 = np.array([0.00443305, 0.05400558, 0.24203623, 0.39905028, 0.24203623, 0.05400558, 0.00443305])
    np.testing.assert_allclose(kernel.numpy(), np.outer(k1, k1), atol=1e-7)


def test_loads_official_pth_strictly(model, state):
    assert isinstance(model, SalientSegmenter)
    assert (model.mode, model.base_size, model.network.base_size) == ("fast", 384, (384, 384))
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert_same_weights(model.network, state)


def test_loads_safetensors(state, tmp_path):
    path = save_safetensors(state, tmp_path / "ckpt_fast.safetensors")
    assert_same_weights(load_salient_model(path, mode="fast", device="cpu").network, state)


@pytest.mark.parametrize("wrap", ["lightning", "module_prefix"])
def test_unwraps_common_wrappers(state, tmp_path, wrap):
    if wrap == "module_prefix":  # DataParallel / DDP
        payload = {f"module.{k}": v for k, v in state.items()}
    else:  # {"state_dict": {"model.<key>": ...}, "epoch": ...}
        payload = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    path = save_pth(payload, tmp_path / f"wrapped_{wrap}.pth")
    assert_same_weights(load_salient_model(path, mode="fast", device="cpu").network, state)


def test_derived_buffers_may_be_missing(state, tmp_path):
    trimmed = {k: v for k, v in state.items() if not k.endswith((".relative_position_index", ".num_batches_tracked"))}
    assert len(trimmed) < len(state)
    net = load_salient_model(save_safetensors(trimmed, tmp_path / "trimmed.safetensors"), mode="fast", device="cpu").network
    loaded = net.state_dict()
    for key in trimmed:
        assert torch.equal(loaded[key], state[key]), key
    for key in set(state) - set(trimmed):
        if key.endswith("relative_position_index"):
            assert torch.equal(loaded[key], state[key])


def test_mode_is_explicit_and_validated(pth_path):
    with pytest.raises(ValueError, match="unknown salient model mode"):
        load_salient_model(pth_path, mode="ckpt_fast")


# ------------------------------------------------------------------------------------------ bad checkpoints
def test_truncated_file(pth_path, tmp_path):
    path = save_truncated(pth_path, tmp_path / "truncated.pth", 0.3)
    with pytest.raises(CheckpointError, match="truncated"):
        load_salient_model(path, mode="fast", device="cpu")


def test_truncated_safetensors(state, tmp_path):
    full = save_safetensors({k: state[k] for k in list(state)[:50]}, tmp_path / "part.safetensors")
    path = save_truncated(full, tmp_path / "truncated.safetensors", 0.5)
    with pytest.raises(CheckpointError, match="truncated"):
        load_salient_model(path, mode="fast", device="cpu")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_salient_model(tmp_path / "nope.pth", mode="fast")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_salient_model(empty, mode="fast")


def test_not_an_inspyrenet_checkpoint(tmp_path):
    path = save_pth(non_inspyrenet_state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as err:
        load_salient_model(path, mode="fast", device="cpu")
    message = str(err.value)
    assert "not an InSPyReNet" in message
    assert "0 of the 1625 expected names" in message
    assert "attention0.conv_key" in message  # a sample of the expected keys
    assert "0.weight" in message  # a sample of what the file has
    assert "ckpt_base.pth" in message  # where the right file comes from


def test_res2net_variant_is_named(state, tmp_path):
    path = save_pth(res2net_variant_state_dict(state), tmp_path / "res2net.pth")
    with pytest.raises(CheckpointError, match="Res2Net50"):
        load_salient_model(path, mode="fast", device="cpu")


def test_wrong_shapes_are_listed(state, tmp_path):
    bad = dict(state)
    bad["context1.branch0.conv.weight"] = torch.zeros(64, 64, 1, 1)
    bad["decoder.conv5.conv.weight"] = torch.zeros(2, 64, 3, 3)
    with pytest.raises(CheckpointError) as err:
        load_salient_model(save_pth(bad, tmp_path / "shapes.pth"), mode="fast", device="cpu")
    message = str(err.value)
    assert "wrong tensor shapes" in message
    assert "context1.branch0.conv.weight: (64, 64, 1, 1) in the file, (64, 128, 1, 1) expected" in message
    assert "decoder.conv5.conv.weight" in message


def test_incomplete_checkpoint(state, tmp_path):
    bad = {k: v for k, v in state.items() if not k.startswith("attention0.")}
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_salient_model(save_pth(bad, tmp_path / "incomplete.pth"), mode="fast", device="cpu")
    message = str(err.value)
    assert "incomplete" in message and "attention0." in message and "extra.weight" in message


def test_non_finite_weights(state, tmp_path):
    bad = dict(state)
    bad["decoder.conv1.conv.weight"] = state["decoder.conv1.conv.weight"].clone()
    bad["decoder.conv1.conv.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        load_salient_model(save_pth(bad, tmp_path / "nan.pth"), mode="fast", device="cpu")


# ------------------------------------------------------------------------------------------ resize policies
@pytest.mark.parametrize(
    "height, width, expected",
    [
        (470, 650, (480, 640)),  # 14.69 -> 15, 20.31 -> 20
        (480, 640, (480, 640)),  # already multiples of 32
        (1400, 1500, (1280, 1376)),  # short side 1400 > 1280: width 1500 * 1280/1400 = 1371.4 -> 43 * 32
        (2000, 1500, (1696, 1280)),  # portrait: height 2000 * 1280/1500 = 1706.7 -> 53 * 32
        (4096, 4096, (1280, 1280)),
        (1280, 5000, (1280, 4992)),  # short side exactly at the cap: not scaled; 5000/32 = 156.25 -> 156
        (48, 80, (64, 64)),  # round-half-to-even like the reference: 1.5 -> 2, 2.5 -> 2
        (10, 12, (32, 32)),  # the reference would round to 0 (and crash); at least 32 here
    ],
)
def test_dynamic_sizes(height, width, expected):
    assert dynamic_input_size(height, width) == expected


def test_policies_per_mode():
    assert network_input_size(470, 650, "base") == (480, 640)  # 1.2.12: base is dynamic
    assert network_input_size(470, 650, "fast") == (384, 384)  # 1.2.12: fast is static 384
    assert network_input_size(470, 650, "base", "static") == (1024, 1024)  # 1.3.x default
    assert network_input_size(470, 650, "fast", "dynamic") == (480, 640)
    with pytest.raises(InputError, match="resize policy"):
        network_input_size(10, 10, "base", "bicubic")


def test_preprocess_is_pil_bilinear_on_8_bit():
    u8 = synthetic_photo(97, 61, seed=3)
    x = preprocess(torch.from_numpy(u8).float().div(255.0)[None], (64, 96))
    expected = np.asarray(Image.fromarray(u8).resize((96, 64), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), (expected - mean) / std, atol=1e-6)


# ------------------------------------------------------------------------------------------ predict
def test_predict_shapes_range_and_layouts(model):
    rgb = photo(90, 70, seed=1)
    pred = model.predict(rgb[None], resize="dynamic")
    assert pred.maps.shape == (1, 70, 90) and pred.maps.dtype == torch.float32
    # normalised at network resolution (64x96), then resampled: the extremes are close to 0 and 1
    assert float(pred.maps.min()) < 0.05 and float(pred.maps.max()) > 0.95
    assert 0.0 <= float(pred.maps.min()) and float(pred.maps.max()) <= 1.0
    assert pred.raw_max.shape == (1,) and 0 < float(pred.raw_max[0]) <= 1 and pred.empty == [False]
    assert float(pred.maps.std()) > 0.05  # a structured map, not a constant

    rgba = torch.cat([rgb, torch.rand(70, 90, 1)], dim=-1)  # alpha is dropped, as PIL convert('RGB') does
    assert torch.equal(model.predict(rgba[None], resize="dynamic").maps, pred.maps)
    assert torch.equal(model.predict(rgb, resize="dynamic").maps, pred.maps)  # [H,W,C] accepted

    grey = rgb.mean(-1, keepdim=True)
    pred_grey = model.predict(grey[None], resize="dynamic").maps
    pred_rgb_grey = model.predict(grey.expand(-1, -1, 3)[None], resize="dynamic").maps
    assert torch.equal(pred_grey, pred_rgb_grey)


def test_nan_pixels_become_black_with_warning(model, caplog):
    image = photo(64, 64, seed=2)
    holes = image.clone()
    holes[10:20, 10:20] = float("nan")
    zeroed = image.clone()
    zeroed[10:20, 10:20] = 0.0
    with caplog.at_level(logging.WARNING, logger="salient_background"):
        maps = model.predict(holes[None], resize="dynamic").maps
    assert "NaN" in caplog.text
    assert torch.isfinite(maps).all()
    assert torch.equal(maps, model.predict(zeroed[None], resize="dynamic").maps)


@pytest.mark.parametrize("height, width", [(1, 1), (7, 20), (31, 31)])
def test_tiny_inputs(model, height, width):
    pred = model.predict(torch.rand(2, height, width, 3), resize="dynamic")
    assert pred.maps.shape == (2, height, width)
    assert torch.isfinite(pred.maps).all() and 0 <= float(pred.maps.min()) <= float(pred.maps.max()) <= 1


def test_large_input_static(model):
    image = torch.from_numpy(synthetic_photo(4096, 4096, seed=4)).float().div(255.0)[None]
    pred = model.predict(image)  # fast mode default: static 384x384
    assert pred.maps.shape == (1, 4096, 4096)
    assert 0.99 < float(pred.maps.max()) <= 1.0
    # corners of the align_corners=True upsampling are the network-resolution corners: check one directly
    small = model.predict(torch.from_numpy(np.array(Image.fromarray(synthetic_photo(4096, 4096, seed=4)).resize((384, 384), Image.BILINEAR))).float().div(255.0)[None])
    assert float(pred.maps[0, 0, 0]) == pytest.approx(float(small.maps[0, 0, 0]), abs=1e-5)
    assert float(pred.maps[0, -1, -1]) == pytest.approx(float(small.maps[0, -1, -1]), abs=1e-5)


def test_non_square_and_batch_independence(model):
    a, b = photo(96, 40, seed=5), photo(96, 40, seed=6)
    alone = model.predict(a[None], resize="dynamic")
    batch = model.predict(torch.stack([b, a]), resize="dynamic")
    chunked = model.predict(torch.stack([b, a]), resize="dynamic", batch_size=1)
    assert batch.maps.shape == (2, 40, 96)
    torch.testing.assert_close(batch.maps[1], alone.maps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.maps, batch.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.raw_max[1], alone.raw_max[0], atol=1e-6, rtol=0)
    assert not torch.allclose(batch.maps[0], batch.maps[1], atol=1e-2)  # different images, different maps
    # normalised per image: every map spans [0, 1] on its own (at 32x96 the network's extremes are exact)
    for m in model.predict(torch.stack([b, a])[:, :32], resize="dynamic").maps:
        assert float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0, abs=1e-6)


def test_empty_object_inside_a_batch(model, caplog):
    a, b = photo(64, 48, seed=8), photo(64, 48, seed=9)
    probe = model.predict(torch.stack([a, b]), resize="dynamic", threshold_empty=0.0)
    lo, hi = sorted(probe.raw_max.tolist())
    assert lo < hi
    threshold = (lo + hi) / 2
    empty_index = int(torch.argmin(probe.raw_max))
    with caplog.at_level(logging.WARNING, logger="salient_background"):
        pred = model.predict(torch.stack([a, b]), resize="dynamic", threshold_empty=threshold)
    assert pred.empty == [i == empty_index for i in range(2)]
    assert torch.count_nonzero(pred.maps[empty_index]) == 0
    other = 1 - empty_index
    assert torch.equal(pred.maps[other], probe.maps[other])
    assert f"image {empty_index + 1} of 2: no salient object" in caplog.text
    assert 0 < EMPTY_THRESHOLD < 1


def test_progress_callback(model):
    calls = []
    model.predict(torch.rand(3, 32, 32, 3), resize="dynamic", batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]


def test_bad_image_layouts(model):
    with pytest.raises(InputError):
        model.predict(torch.rand(1, 3, 32, 32, 2))
    with pytest.raises(InputError):
        model.predict(torch.rand(1, 32, 32, 5))


# ------------------------------------------------------------------------------------------ dtype
def test_dtype_resolution(caplog):
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="salient_background"):
        assert resolve_dtype(torch.float16, cpu) == torch.float32
    assert "float16" in caplog.text
    with pytest.raises(InputError):
        resolve_dtype("int8", cpu)


def test_bfloat16_on_cpu(model):
    bf16 = SalientSegmenter(copy.deepcopy(model.network), mode="fast").to(dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and model.dtype == torch.float32
    image = photo(48, 32, seed=10)[None]
    pred = bf16.predict(image, resize="dynamic")
    ref = model.predict(image, resize="dynamic")
    assert pred.maps.dtype == torch.float32 and torch.isfinite(pred.maps).all()
    # bf16 keeps ~3 significant digits: same map up to rounding noise, far from an unrelated map
    assert float((pred.maps - ref.maps).abs().mean()) < 0.1
