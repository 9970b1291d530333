"""The SAM and expansion nodes outside ComfyUI (plain V1 classes), on the tiny official-layout checkpoint."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from salient_background.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from salient_background.nodes import sam_nodes
from sb_testkit.images import disk_mask, object_on_background
from sb_testkit.sam import EncoderCounter, cached_checkpoint

NODE_IDS = ["SalientBG_SAMLoader", "SalientBG_SAMRefineMask", "SalientBG_ObjectExpansionScore",
            "SalientBG_SignedSalientAreaChange"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sam():
    (handle,) = sam_nodes.SAMLoader().load(cached_checkpoint("tiny"))
    return handle


def test_nodes_are_registered_with_consistent_schemas():
    for node_id in NODE_IDS:
        cls = NODE_CLASS_MAPPINGS[node_id]
        assert node_id in NODE_DISPLAY_NAME_MAPPINGS
        assert cls.CATEGORY.startswith("Salient Background/")
        spec = cls.INPUT_TYPES()
        assert "required" in spec
        assert hasattr(cls, cls.FUNCTION)
        if hasattr(cls, "OUTPUT_IS_LIST"):
            assert len(cls.OUTPUT_IS_LIST) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert sam_nodes.SAMLoader.RETURN_TYPES == ("SALIENT_BG_SAM",)
    assert NODE_CLASS_MAPPINGS["SalientBG_ObjectExpansionScore"].INPUT_TYPES()["required"]["sam"] == ("SALIENT_BG_SAM",)


def test_loader_caches_and_reloads_a_changed_file(tmp_path):
    import os
    import shutil

    path = tmp_path / "sam.pth"
    shutil.copyfile(cached_checkpoint("tiny"), path)
    (a,) = sam_nodes.SAMLoader().load(str(path))
    (b,) = sam_nodes.SAMLoader().load(str(path))
    assert a is b and a.variant == "custom"
    state = torch.load(path, weights_only=True)
    state["mask_decoder.iou_token.weight"] += 1.0
    torch.save(state, path)
    os.utime(path, (1, 1))  # a different file stamp, as a replaced file has
    (c,) = sam_nodes.SAMLoader().load(str(path))
    assert c is not a
    assert torch.equal(c.module().mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])


def test_loader_names_the_folder_and_the_files_when_missing():
    from salient_background.models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth"):
        sam_nodes.SAMLoader().load("no_such_sam.pth")
    reason = sam_nodes.SAMLoader.VALIDATE_INPUTS("sam_vit_b_01ec64.pth")  # what ComfyUI shows before running
    assert isinstance(reason, str) and "download" in reason and "sam_vit_b_01ec64.pth" in reason


def test_refine_node(sam):
    image, mask = object_on_background(48, 64)
    images = torch.stack([image, image.flip(0)])
    (refined,) = sam_nodes.SAMRefineMask().refine(sam, images, mask[None], "union", 4, 0, True, False, "auto")
    assert refined.shape == (2, 48, 64) and refined.dtype == torch.float32
    assert torch.all(refined >= mask)  # union keeps the input everywhere


def test_score_node_on_four_seeds_of_one_mask(sam):
    image, mask = object_on_background(48, 64)
    images = torch.stack([image, image * 0.9, image.flip(1), image.flip(0)])
    with EncoderCounter(sam.module()) as counter:
        out = sam_nodes.ObjectExpansionScore().score(sam, mask[None], images, 6, 1, "auto")
    assert counter.calls == 4
    text = out["ui"]["text"]
    rel, frac, px, sam_mask, overlay = out["result"]
    assert len(rel) == len(frac) == len(px) == 4
    assert sam_mask.shape == (4, 48, 64) and overlay.shape == (4, 48, 64, 3)
    mi = mask >= 0.5
    for k in range(4):
        expected = float((sam_mask[k].bool() & ~mi).sum())
        assert px[k] == expected
        assert rel[k] == pytest.approx(expected / float(mi.sum()))
        assert frac[k] == pytest.approx(expected / (48 * 64))
    assert isinstance(text, list) and "image 4/4" in text[0] and "mean over 4 images" in text[0]
    assert "custom" in text[0] and "6 points" in text[0]


def test_score_node_with_an_empty_mask_reports_nan(sam):
    image, _ = object_on_background(32, 32)
    out = sam_nodes.ObjectExpansionScore().score(sam, torch.zeros(1, 32, 32), image[None], 4, 0, "auto")
    assert math.isnan(out["result"][0][0]) and math.isnan(out["result"][2][0])
    assert "undefined" in out["ui"]["text"][0]


def test_signed_salient_node_calls_the_salient_model_per_image():
    seen = []

    class FakeSalientModel:  # the SALIENT_MODEL socket's API: predict(images, resize) -> .maps [B,H,W]
        def predict(self, images, resize):
            seen.append((images.shape[0], resize))
            big = disk_mask(40, 40, 20, 20, 10 + 2 * len(seen))
            return SimpleNamespace(maps=big[None])

    mask = disk_mask(40, 40, 20, 20, 10)
    images = torch.rand(2, 40, 40, 3)
    out = sam_nodes.SignedSalientAreaChange().score(FakeSalientModel(), mask[None], images, "dynamic")
    values, maps = out["result"]
    assert seen == [(1, "dynamic"), (1, "dynamic")]
    base = float((mask >= 0.5).float().mean())
    assert values[0] == pytest.approx(float(disk_mask(40, 40, 20, 20, 12).mean()) - base)
    assert values[1] == pytest.approx(float(disk_mask(40, 40, 20, 20, 14).mean()) - base)
    assert maps.shape == (2, 40, 40) and "+" in out["ui"]["text"][0]
