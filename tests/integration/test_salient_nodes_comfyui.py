"""The salient nodes in a real ComfyUI graph, over HTTP: LoadImage -> Load Salient Model (full-size random
InSPyReNet in the official .pth layout, fast mode) -> Salient Object Mask -> Mask Refine -> SaveImage of the
cut-out, the preview and the masks (MaskToImage). Checks the saved files: sizes, a non-constant mask, and the
cut-out being exactly the photo composited over the mask (see conftest.py for the server)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

WIDTH, HEIGHT = 320, 224  # not square, not a multiple of 32: the nodes must give the input size back
CHECKPOINT = "sb_random_ckpt_fast.pth"


@pytest.fixture(scope="module")
def salient_checkpoint(comfy):
    from sb_testkit.inspyrenet import random_inspyrenet_state_dict, save_pth

    path = comfy.models_dir / "salient" / CHECKPOINT
    if not path.exists():
        save_pth(random_inspyrenet_state_dict(seed=0, base_size=384), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)  # appears in the folder only once complete
    return CHECKPOINT


@pytest.fixture(scope="module")
def photo(comfy):
    from sb_testkit.inspyrenet import synthetic_photo

    pixels = synthetic_photo(WIDTH, HEIGHT, seed=7)
    name = "sb_salient_photo.png"
    Image.fromarray(pixels).save(comfy.input_dir / name)
    return name, pixels.astype(np.float64) / 255.0


def _with_defaults(comfy, class_type: str, inputs: dict) -> dict:
    """Fill required widget inputs we did not set with the defaults /object_info declares (so a new widget
    on a node does not break the graph), failing if a required input has no default."""
    spec = comfy.object_info(class_type)[class_type]["input"]
    out = dict(inputs)
    for name, item in spec.get("required", {}).items():
        if name in out:
            continue
        options = item[1] if len(item) > 1 and isinstance(item[1], dict) else {}
        if isinstance(item[0], list):
            out[name] = options.get("default", item[0][0] if item[0] else None)
        elif "default" in options:
            out[name] = options["default"]
        else:
            raise AssertionError(f"{class_type} has a new required input {name!r} with no default: update this test")
    return out


def _mask_preview_prompt(comfy, image_name: str, checkpoint: str, mode: str) -> dict:
    """LoadImage -> our loader (``checkpoint``) -> Salient Object Mask -> preview: the smallest graph using the loader."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "SalientBG_LoadSalientModel",
              "inputs": {"checkpoint": checkpoint, "mode": mode, "precision": "fp32"}},
        "3": {"class_type": "SalientBG_SalientMask",
              "inputs": {"salient_model": ["2", 0], "image": ["1", 0], "resize": "static", "mask_type": "soft"}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    return {k: {"class_type": v["class_type"], "inputs": _with_defaults(comfy, v["class_type"], v["inputs"])}
            for k, v in prompt.items()}


def _load_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def test_salient_mask_graph_saves_cutout_and_masks(comfy, salient_checkpoint, photo):
    image_name, pixels = photo
    nodes = {
        "1": ("LoadImage", {"image": image_name}),
        "2": ("SalientBG_LoadSalientModel", {"checkpoint": salient_checkpoint, "mode": "fast", "precision": "fp32"}),
        "3": ("SalientBG_SalientMask", {"salient_model": ["2", 0], "image": ["1", 0], "resize": "static",
                                        "mask_type": "soft"}),
        "4": ("SalientBG_MaskRefine", {"mask": ["3", 0], "threshold": 0.0, "grow": 2, "feather": 3,
                                       "fill_holes": False, "keep_largest": 0, "invert": False}),
        "5": ("MaskToImage", {"mask": ["3", 0]}),
        "6": ("SaveImage", {"images": ["5", 0], "filename_prefix": "sb_it/raw_mask"}),
        "7": ("MaskToImage", {"mask": ["4", 0]}),
        "8": ("SaveImage", {"images": ["7", 0], "filename_prefix": "sb_it/refined_mask"}),
        "9": ("SaveImage", {"images": ["3", 1], "filename_prefix": "sb_it/cutout"}),
        "10": ("SaveImage", {"images": ["3", 3], "filename_prefix": "sb_it/preview"}),
        "11": ("MaskToImage", {"mask": ["3", 2]}),
        "12": ("SaveImage", {"images": ["11", 0], "filename_prefix": "sb_it/background_mask"}),
    }
    prompt = {nid: {"class_type": ct, "inputs": _with_defaults(comfy, ct, inputs)} for nid, (ct, inputs) in nodes.items()}

    outputs = comfy.run(prompt, timeout=600)

    saved = {}
    for nid in ("6", "8", "9", "10", "12"):
        files = comfy.output_files(outputs, nid)
        assert len(files) == 1, (nid, outputs.get(nid))
        assert files[0].is_file(), files[0]
        saved[nid] = _load_png(files[0])
        assert saved[nid].shape == (HEIGHT, WIDTH, 3), (nid, saved[nid].shape)

    raw, refined, cutout, preview, background = (saved[k][..., 0] if k in ("6", "8", "12") else saved[k]
                                                  for k in ("6", "8", "9", "10", "12"))
    # the random network gives a structured map, not a constant; refine (grow + feather) changes it
    assert raw.max() - raw.min() > 0.2, (raw.min(), raw.max())
    assert raw.std() > 0.02, raw.std()
    assert refined.max() - refined.min() > 0.2 and not np.allclose(refined, raw, atol=2 / 255)
    # background_mask is the complement of object_mask
    np.testing.assert_allclose(background, 1.0 - raw, atol=1.5 / 255)
    # the cut-out is the photo over neutral grey through the object mask (8-bit rounding of mask and output)
    expected = pixels * raw[..., None] + 0.5 * (1.0 - raw[..., None])
    assert np.abs(cutout - expected).max() <= 2.5 / 255, np.abs(cutout - expected).max()
    # the preview is the photo, tinted in proportion to the object mask (nowhere more than the mask's value)
    assert np.all(np.abs(preview - pixels) <= raw[..., None] + 2 / 255)
    assert not np.allclose(preview, pixels, atol=4 / 255)

    # binary masks: re-runs the mask node only (the loader's output comes from ComfyUI's cache)
    prompt["3"]["inputs"]["mask_type"] = "binary"
    outputs = comfy.run(prompt, timeout=600)
    binary = _load_png(comfy.output_files(outputs, "6")[0])[..., 0]
    assert set(np.unique(binary)) <= {0.0, 1.0}, np.unique(binary)
    decided = np.abs(raw - 0.5) > 1.5 / 255  # away from the threshold, where 8-bit rounding cannot flip it
    np.testing.assert_array_equal(binary[decided], (raw[decided] >= 0.5).astype(np.float64))


def test_wrong_mode_or_bad_checkpoint_reports_an_execution_error(comfy, comfy_error, photo):
    """A file that is not an InSPyReNet checkpoint fails in the loader with our message, not a crash."""
    bad = comfy.models_dir / "salient" / "sb_not_inspyrenet.pth"
    import torch

    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(comfy_error) as err:
        comfy.run(_mask_preview_prompt(comfy, photo[0], bad.name, mode="fast"), timeout=300)
    text = str(err.value)
    assert "SalientBG_LoadSalientModel" in text, text
    assert bad.name in text or "InSPyReNet" in text, text


def test_missing_checkpoint_is_rejected_before_running_with_the_download_command(comfy, comfy_error, photo):
    """A shared workflow naming a checkpoint this ComfyUI lacks: the prompt is refused at validation (HTTP 400) with
    the folders searched and the download command, instead of ComfyUI's bare 'Value not in list'."""
    with pytest.raises(comfy_error) as err:
        comfy.run(_mask_preview_prompt(comfy, photo[0], "ckpt_base.pth", mode="base"), timeout=120)
    text = str(err.value)
    assert "custom_validation_failed" in text or "Custom validation failed" in text, text
    assert "python -m salient_background download inspyrenet-base" in text, text
    assert "Value not in list" not in text, text
