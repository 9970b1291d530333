"""The SAM nodes in a real ComfyUI graph, over HTTP, on a full-size random vit_b in Meta's official .pth layout in
the ``sams`` model folder: LoadImage + LoadImageMask -> Load SAM -> SAM refine mask -> Object expansion score on a
batch of two "generated" images -> SaveImage of the overlay and the masks. The score's UI text is checked against
the saved masks (E recomputed from the PNGs). See conftest.py for the server."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

WIDTH, HEIGHT = 200, 136
# vit_b (default) is the real architecture; SB_SAM_IT_VARIANT=tiny checks the wiring in seconds (same key layout)
VARIANT = os.environ.get("SB_SAM_IT_VARIANT", "vit_b")
CHECKPOINT = f"sb_random_sam_{VARIANT}.pth"


@pytest.fixture(scope="module")
def sam_checkpoint(comfy):
    from sb_testkit.sam import save_random_sam

    path = comfy.models_dir / "sams" / CHECKPOINT
    if not path.exists():
        save_random_sam(path.with_suffix(".tmp"), VARIANT, seed=0)
        path.with_suffix(".tmp").rename(path)  # appears in the folder only once complete
    return CHECKPOINT


@pytest.fixture(scope="module")
def inputs(comfy):
    from sb_testkit.images import object_on_background

    image, mask = object_on_background(HEIGHT, WIDTH, seed=3)
    to8 = lambda a: (a.numpy() * 255).round().astype(np.uint8)  # noqa: E731
    Image.fromarray(to8(image)).save(comfy.input_dir / "sb_sam_photo.png")
    Image.fromarray(to8(image.flip(1) * 0.8)).save(comfy.input_dir / "sb_sam_generated.png")
    Image.fromarray(to8(mask), mode="L").save(comfy.input_dir / "sb_sam_mask.png")
    return "sb_sam_photo.png", "sb_sam_generated.png", "sb_sam_mask.png"


def _grey(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def test_loader_lists_the_sams_folder(comfy, sam_checkpoint):
    info = comfy.object_info("SalientBG_SAMLoader")["SalientBG_SAMLoader"]
    assert sam_checkpoint in info["input"]["required"]["sam_name"][0]
    assert info["output"] == ["SALIENT_BG_SAM"]
    score = comfy.object_info("SalientBG_ObjectExpansionScore")["SalientBG_ObjectExpansionScore"]
    assert score["output_is_list"] == [True, True, True, False, False] and score["output_node"] is True


def test_refine_then_score_a_batch(comfy, sam_checkpoint, inputs):
    photo, generated, mask = inputs
    graph = {
        "1": ("LoadImage", {"image": photo}),
        "2": ("LoadImageMask", {"image": mask, "channel": "red"}),
        "3": ("SalientBG_SAMLoader", {"sam_name": sam_checkpoint}),
        "4": ("SalientBG_SAMRefineMask", {"sam": ["3", 0], "image": ["1", 0], "object_mask": ["2", 0],
                                         "mode": "replace", "points": 4, "seed": 0, "negative_points": True,
                                         "box": False, "mask_choice": "auto"}),
        "5": ("LoadImage", {"image": generated}),
        "6": ("ImageBatch", {"image1": ["1", 0], "image2": ["5", 0]}),
        "7": ("SalientBG_ObjectExpansionScore", {"sam": ["3", 0], "object_mask": ["2", 0], "generated_image": ["6", 0],
                                                "points": 4, "seed": 0, "mask_choice": "auto"}),
        "8": ("SaveImage", {"images": ["7", 4], "filename_prefix": "sb_sam/overlay"}),
        "9": ("MaskToImage", {"mask": ["7", 3]}),
        "10": ("SaveImage", {"images": ["9", 0], "filename_prefix": "sb_sam/sam_mask"}),
        "11": ("MaskToImage", {"mask": ["4", 0]}),
        "12": ("SaveImage", {"images": ["11", 0], "filename_prefix": "sb_sam/refined"}),
    }
    prompt = {nid: {"class_type": ct, "inputs": inp} for nid, (ct, inp) in graph.items()}
    outputs = comfy.run(prompt, timeout=1500)

    overlays = comfy.output_files(outputs, "8")
    sam_masks = [_grey(p) for p in comfy.output_files(outputs, "10")]
    refined = [_grey(p) for p in comfy.output_files(outputs, "12")]
    assert len(overlays) == 2 and len(sam_masks) == 2 and len(refined) == 1
    for p in overlays:
        with Image.open(p) as im:
            assert im.size == (WIDTH, HEIGHT)
    assert refined[0].shape == (HEIGHT, WIDTH) and set(np.unique(refined[0])) <= {0.0, 1.0}

    text = "".join(outputs["7"]["text"])
    print("\n[ObjectExpansionScore UI text]\n" + text)
    assert f"SAM {'custom' if VARIANT == 'tiny' else VARIANT}, 4 points, seed 0" in text
    m_i = _grey(comfy.input_dir / mask) >= 0.5
    for k, m_o in enumerate(sam_masks):
        found = re.search(rf"image {k + 1}/2: expansion ([\d,]+) px", text)
        assert found, text
        assert int(found.group(1).replace(",", "")) == int(((m_o >= 0.5) & ~m_i).sum())
    assert "mean over 2 images" in text
