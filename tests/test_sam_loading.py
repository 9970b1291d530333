"""Loading Meta's SAM checkpoints: variant from the weights (full-size shapes on the meta device), strict and
exact loading, clear errors for files that are not SAM (v1)."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from salient_background.models.errors import CheckpointError
from salient_background.models.networks.sam import detect_sam_architecture, load_sam, sam_from_state_dict
from sb_testkit.sam import cached_checkpoint, official_state_shapes


@pytest.mark.parametrize("variant,dim,depth,heads,glob", [
    ("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    ("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
])
def test_variant_is_read_from_full_size_shapes(variant, dim, depth, heads, glob):
    state = official_state_shapes(variant)  # meta tensors: the real shapes, no memory
    arch = detect_sam_architecture(state)
    assert arch.variant == variant
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.global_attn_indexes) == (dim, depth, heads, glob)
    assert (arch.img_size, arch.patch_size, arch.window_size) == (1024, 16, 14)


def test_full_size_shapes_without_data_are_refused_not_half_loaded():
    # a state dict of meta tensors has the right shapes but no values: the loader must not hand back a network
    # whose weights are missing (it builds on the meta device and assigns the file's tensors)
    with pytest.raises(CheckpointError, match="uninitialised"):
        sam_from_state_dict(official_state_shapes("vit_h"))


def test_tiny_checkpoint_loads_exactly_and_reports_custom(tmp_path):
    path = cached_checkpoint("tiny")
    saved = torch.load(path, weights_only=True)
    loaded = load_sam(path)
    assert loaded.variant == "custom"
    assert loaded.architecture.patch_size == 64 and loaded.architecture.depth == 2
    got = loaded.model.state_dict()
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert loaded.model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert not loaded.model.training
    # the file name is not trusted: a tiny model called sam_vit_h is still what its weights say
    renamed = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(saved, renamed)
    assert load_sam(renamed).architecture == loaded.architecture


def test_wrapped_and_prefixed_state_dicts_load(tmp_path):
    state = torch.load(cached_checkpoint("tiny"), weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    assert load_sam(path).architecture.embed_dim == 32


def test_not_a_sam_checkpoint_says_so(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="not a Segment Anything"):
        load_sam(path)
    sam2 = tmp_path / "sam2.pth"
    torch.save({"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(1)}, sam2)
    with pytest.raises(CheckpointError, match="SAM 2"):
        load_sam(sam2)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    state = torch.load(cached_checkpoint("tiny"), weights_only=True)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_sam(path)
    state = dict(torch.load(cached_checkpoint("tiny"), weights_only=True), **{"mask_decoder.hf_token.weight": torch.zeros(1, 256)})
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="HQ-SAM"):
        load_sam(path)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"x": Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError):
        load_sam(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    data = open(cached_checkpoint("tiny"), "rb").read()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        load_sam(path)


@pytest.mark.slow
def test_full_size_vit_b_in_official_layout_loads_exactly():
    """The real vit_b architecture (93.7 M parameters, random weights, Meta's key layout) through the loader.
    (A CPU forward of the full-size encoder takes minutes on a shared 2-core machine: the forward path is
    covered by the tiny model, which runs the same code at the same 1024-pixel input, and by the ComfyUI
    integration test and the benchmark on this very checkpoint.)"""
    path = cached_checkpoint("vit_b")
    saved = torch.load(path, weights_only=True, mmap=True)
    assert set(saved) == set(official_state_shapes("vit_b"))  # exactly Meta's layout
    loaded = load_sam(path)
    assert loaded.variant == "vit_b"
    assert loaded.architecture.describe().startswith("vit_b (embed 768, depth 12, heads 12")
    params = dict(loaded.model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 93_735_472
    for key in ("image_encoder.pos_embed", "image_encoder.blocks.11.attn.rel_pos_h", "mask_decoder.iou_token.weight"):
        assert torch.equal(params[key], saved[key])
    assert loaded.model.image_encoder.blocks[2].window_size == 0 and loaded.model.image_encoder.blocks[3].window_size == 14
