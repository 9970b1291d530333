"""Every shipped API-format workflow (``workflows/api/*.json``) runs headless inside a real ComfyUI and produces its
outputs, on random-weight models placed in the session's model folders under the exact names the workflows use:

* ``salient/ckpt_fast.pth`` (default) or ``salient/ckpt_base.pth`` -- a random InSPyReNet in the official layout;
* ``sams/sam_vit_b_01ec64.pth`` -- a random SAM in Meta's layout: by default the "tiny" same-layout SAM of
  ``sb_testkit.sam`` (the loader reads the architecture from the shapes; a full-size vit_b forward costs 40+ s
  here), ``SB_WORKFLOW_SAM_VARIANT=vit_b`` for the full-size one;
* ``checkpoints/512-inpainting-ema.safetensors`` and ``controlnet/photo-background-generation/`` -- the full-size
  random SD2-inpainting single file and the salient ControlNet (HF pipeline layout) that make_full_size_models.py
  builds once into ``SB_FULL_MODELS_DIR`` (see test_controlnet_comfyui.py); symlinked;
* ``checkpoints/sd-v1-5-inpainting.ckpt``, ``checkpoints/sd_xl_1.0_inpainting_0.1.safetensors``,
  ``controlnet/salient_controlnet_sd15/`` and ``controlnet/salient_controlnet_sdxl/`` -- the random SD1.5-inpainting
  (full size, a .ckpt pickle as published) and SDXL-family (Segmind-Vega-shaped) inpainting single files and our
  exported ControlNets for them that make_base_models.py builds once into ``SB_BASE_MODELS_DIR`` (see
  test_controlnet_bases_comfyui.py); symlinked;
* ``input/example_product.png`` -- copied from ``workflows/inputs``.

The workflow files are never edited; the loaded prompt is patched to lower the cost: KSampler steps -> 2, Frame for
SD2 size -> 64, Repeat Latent Batch amount -> 2, the salient loader -> mode "fast" on ``ckpt_fast.pth``
(``SB_WORKFLOW_SALIENT_MODE=base`` keeps the workflow's own base mode and ``ckpt_base.pth``). A few extra SaveImage
nodes are added where a check needs an intermediate value (they change nothing upstream).

Run under ``flock /tmp/heavy.lock`` on shared machines (the SD2 workflows load ~5 GB of weights).
"""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
API_DIR = REPO / "workflows" / "api"
INPUT_IMAGE = REPO / "workflows" / "inputs" / "example_product.png"
FULL_MODELS_DIR = Path(os.environ.get("SB_FULL_MODELS_DIR") or Path(tempfile.gettempdir()) / "sb_full_size_models")
SALIENT_MODE = os.environ.get("SB_WORKFLOW_SALIENT_MODE", "fast")
SAM_VARIANT = os.environ.get("SB_WORKFLOW_SAM_VARIANT", "tiny")
SD2_CHECKPOINT = "512-inpainting-ema.safetensors"
CONTROLNET = "photo-background-generation"
SAM_NAME = "sam_vit_b_01ec64.pth"
FRAME_SIZE = 64
REPEAT = 2
TIMEOUT = 1500

WORKFLOWS = sorted(p.name for p in API_DIR.glob("*.json"))
EXPECTED_WORKFLOWS = {"cutout_rgba_batch.json", "background_generation_paper.json",
                      "background_generation_paper_sd15.json", "background_generation_paper_sdxl.json",
                      "compare_si2_vs_controlnet.json", "product_shots_sam_crop_pasteback.json",
                      # run by test_gate_comfyui.py
                      "background_generation_paper_gate.json", "sdxl_inpainting_stock_gate.json"}
BASE_MODELS_DIR = Path(os.environ.get("SB_BASE_MODELS_DIR") or Path(tempfile.gettempdir()) / "sb_base_models")
# the names the SD1.5 / SDXL workflows use -> the random files make_base_models.py writes
BASE_VARIANT_FILES = {
    "checkpoints/sd-v1-5-inpainting.ckpt": "sd15_inpainting_random.ckpt",
    "checkpoints/sd_xl_1.0_inpainting_0.1.safetensors": "sdxl_vega_inpainting_random.safetensors",
    "controlnet/salient_controlnet_sd15": "salient_controlnet_sd15",
    "controlnet/salient_controlnet_sdxl": "salient_controlnet_sdxl",
}


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src, target_is_directory=src.is_dir())


def _load(name: str) -> dict:
    return json.loads((API_DIR / name).read_text())


def _nodes(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


def _patched(name: str) -> dict:
    """The workflow's API prompt with the cost lowered (the file itself is untouched)."""
    prompt = copy.deepcopy(_load(name))
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "SalientBG_FrameForSD2":
            inputs["size"] = FRAME_SIZE
        elif kind == "RepeatLatentBatch":
            inputs["amount"] = REPEAT
        elif kind == "SalientBG_LoadSalientModel" and SALIENT_MODE == "fast":
            inputs["mode"], inputs["checkpoint"] = "fast", "ckpt_fast.pth"
    return prompt


def _save(prompt: dict, nid: str, source: list, prefix: str, mask: bool = False) -> None:
    """Add a SaveImage (through MaskToImage for a mask) of ``source`` as node ``nid``."""
    if mask:
        prompt[nid + "_img"] = {"class_type": "MaskToImage", "inputs": {"mask": source}}
        source = [nid + "_img", 0]
    prompt[nid] = {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}}


def _files(comfy, outputs: dict, nid: str, count: int) -> list[Path]:
    files = comfy.output_files(outputs, nid)
    assert len(files) == count, (nid, outputs.get(nid))
    for f in files:
        assert f.is_file() and f.stat().st_size > 100, f
    return files


def _array(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert(mode)).astype(np.int16)


def _photo() -> np.ndarray:
    return _array(INPUT_IMAGE, "RGB")


def _previews(comfy, outputs: dict, nid: str, count: int) -> list[np.ndarray]:
    """The images a PreviewImage-like node reported, fetched through ComfyUI's /view endpoint (ComfyUI keeps temp
    files in <--temp-directory>/temp, which conftest's output_files does not map)."""
    items = outputs.get(nid, {}).get("images", [])
    assert len(items) == count, (nid, outputs.get(nid))
    arrays = []
    for item in items:
        query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{comfy.base_url}/view?{query}", timeout=60) as resp:
            data = resp.read()
        assert len(data) > 100, item
        with Image.open(io.BytesIO(data)) as im:
            arrays.append(np.asarray(im.convert("RGB")).astype(np.int16))
    return arrays


def _score_text(outputs: dict, nid: str) -> str:
    text = outputs.get(nid, {}).get("text")
    assert text, (nid, outputs.get(nid))
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_models(comfy):
    """The salient model, the SAM and the input photo: all the cut-out workflow needs."""
    from sb_testkit.inspyrenet import write_random_checkpoint
    from sb_testkit.sam import save_random_sam

    salient_name = "ckpt_fast.pth" if SALIENT_MODE == "fast" else "ckpt_base.pth"
    salient = comfy.models_dir / "salient" / salient_name
    if not salient.exists():
        write_random_checkpoint(salient.with_suffix(".tmp"), SALIENT_MODE, seed=0)
        salient.with_suffix(".tmp").rename(salient)
    sam = comfy.models_dir / "sams" / SAM_NAME
    if not sam.exists():
        save_random_sam(sam.with_suffix(".tmp"), SAM_VARIANT, seed=0)
        sam.with_suffix(".tmp").rename(sam)
    shutil.copyfile(INPUT_IMAGE, comfy.input_dir / INPUT_IMAGE.name)
    return comfy


@pytest.fixture(scope="module")
def sd2_models(base_models):
    """Plus the full-size random SD2-inpainting single file and the salient ControlNet (built once, cached)."""
    comfy = base_models
    proc = subprocess.run([comfy.python, str(HERE / "make_full_size_models.py"), str(comfy.root), str(FULL_MODELS_DIR)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print("[full-size models]", proc.stdout.strip().splitlines()[-1])
    _link(FULL_MODELS_DIR / "sd2_inpainting_random.safetensors", comfy.models_dir / "checkpoints" / SD2_CHECKPOINT)
    cn = comfy.models_dir / "controlnet" / CONTROLNET
    if not cn.exists():  # the workflow names the pipeline folder; its ControlNet lives in controlnet/ inside it
        _link(FULL_MODELS_DIR / CONTROLNET, cn)
    return comfy


@pytest.fixture(scope="module")
def base_variant_models(base_models):
    """Plus random SD1.5- and SDXL-family inpainting single files and our ControlNet exports for them."""
    comfy = base_models
    proc = subprocess.run([comfy.python, str(HERE / "make_base_models.py"), str(comfy.root), str(BASE_MODELS_DIR)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print("[base models]", proc.stdout.strip().splitlines()[-1])
    for name, source in BASE_VARIANT_FILES.items():
        _link(BASE_MODELS_DIR / source, comfy.models_dir / name)
    return comfy


# ---------------------------------------------------------------------------------------------------- tests
def test_every_api_workflow_is_covered():
    assert set(WORKFLOWS) == EXPECTED_WORKFLOWS, "a workflow was added or removed: give it a test below"


def test_patches_only_lower_the_cost():
    """The patch touches only the cost knobs (and the salient checkpoint name with the mode)."""
    for name in WORKFLOWS:
        original, patched = _load(name), _patched(name)
        assert original.keys() == patched.keys()
        for nid in original:
            a, b = original[nid], patched[nid]
            assert a["class_type"] == b["class_type"]
            changed = {k for k in a["inputs"] if a["inputs"][k] != b["inputs"][k]}
            assert changed <= {"steps", "size", "amount", "mode", "checkpoint"}, (name, nid, changed)


def test_cutout_rgba_batch(base_models):
    comfy = base_models
    prompt = _patched("cutout_rgba_batch.json")
    _save(prompt, "raw_mask", ["4", 0], "wf_cutout/raw_mask", mask=True)
    outputs = comfy.run(prompt, timeout=TIMEOUT)
    cutout_path = _files(comfy, outputs, "8", 1)[0]
    with Image.open(cutout_path) as im:
        assert im.mode == "RGBA" and im.size == (512, 512), (im.mode, im.size)
    cutout = _array(cutout_path, "RGBA")
    mask = _array(_files(comfy, outputs, "10", 1)[0], "L")
    raw = _array(_files(comfy, outputs, "raw_mask", 1)[0], "L")
    photo = _photo()
    # the photo's own pixels, with alpha = the refined object mask (1 = object -> opaque)
    assert np.abs(cutout[..., :3] - photo).max() <= 1
    assert np.abs(cutout[..., 3] - mask).max() <= 1
    # Mask Refine ran: feather 1 on the thresholded, hole-filled, largest-component mask differs from the raw map
    print(f"[cutout] alpha: mean {cutout[..., 3].mean() / 255:.3f}, opaque {np.mean(cutout[..., 3] > 127):.3f}; "
          f"raw salient map mean {raw.mean() / 255:.3f}, mean |refined - raw| {np.abs(mask - raw).mean():.2f} / 255")
    assert 0 < np.mean(mask > 127) < 1, "the refined mask is empty or full on the example photo"


def test_background_generation_paper(sd2_models):
    comfy = sd2_models
    prompt = _patched("background_generation_paper.json")
    _save(prompt, "framed_mask", ["5", 1], "wf_paper/framed_mask", mask=True)
    outputs = comfy.run(prompt, timeout=TIMEOUT)
    final = _array(_files(comfy, outputs, "14", 1)[0], "RGB")
    assert final.shape == (512, 512, 3)  # restored to the input photo's size
    overlay = _previews(comfy, outputs, "17", 1)[0]  # PreviewImage of the expansion overlay
    assert overlay.shape == (FRAME_SIZE, FRAME_SIZE, 3)
    text = _score_text(outputs, "16")
    print("[paper] expansion score:", text.replace("\n", " | "))
    assert text.startswith("SAM ") and "8 points" in text
    framed = _array(_files(comfy, outputs, "framed_mask", 1)[0], "L")
    assert framed.shape == (FRAME_SIZE, FRAME_SIZE)
    log = comfy.log_text()
    assert "missing controlnet keys" not in log and "unexpected controlnet keys" not in log


def test_compare_si2_vs_controlnet(sd2_models):
    comfy = sd2_models
    outputs = comfy.run(_patched("compare_si2_vs_controlnet.json"), timeout=TIMEOUT)
    with_cn = _array(_files(comfy, outputs, "14", 1)[0], "RGB")
    si2 = _array(_files(comfy, outputs, "24", 1)[0], "RGB")
    assert with_cn.shape == si2.shape == (FRAME_SIZE, FRAME_SIZE, 3)
    for nid in ("16", "26"):
        assert _previews(comfy, outputs, nid, 1)[0].shape == (FRAME_SIZE, FRAME_SIZE, 3)
    texts = [_score_text(outputs, nid) for nid in ("15", "25")]
    print("[compare] ControlNet:", texts[0].replace("\n", " | "), "|| SI2:", texts[1].replace("\n", " | "))
    # same seed, same prompt; strength 1 vs 0 (the SI2 baseline): the ControlNet changed the picture
    diff = np.abs(with_cn - si2).mean()
    print(f"[compare] mean |ControlNet - SI2| = {diff:.2f} / 255")
    assert diff > 1.0


def test_product_shots_sam_crop_pasteback(sd2_models):
    comfy = sd2_models
    prompt = _patched("product_shots_sam_crop_pasteback.json")
    _save(prompt, "crop_region", ["17", 1], "wf_product/crop_region", mask=True)  # where the frame covered the photo
    _save(prompt, "sam_mask", ["6", 0], "wf_product/sam_mask", mask=True)
    outputs = comfy.run(prompt, timeout=TIMEOUT)
    finals = [_array(p, "RGB") for p in _files(comfy, outputs, "18", REPEAT)]
    sam_mask = _array(_files(comfy, outputs, "sam_mask", 1)[0], "L")
    assert sam_mask.shape == (512, 512)
    photo = _photo()
    region = _array(_files(comfy, outputs, "crop_region", REPEAT)[0], "L") > 127
    print(f"[product] SAM-refined mask covers {np.mean(sam_mask > 127):.3f} of the photo; crop region covers {region.mean():.3f} of the photo; "
          f"{len(finals)} shots, mean |shot1 - shot2| = {np.abs(finals[0] - finals[1]).mean():.2f} / 255")
    assert region.any()
    for final in finals:
        assert final.shape == (512, 512, 3)  # restored into the photo's own size
        if not region.all():  # outside the crop the photo is untouched
            assert np.abs(final[~region] - photo[~region]).max() <= 1
    assert not np.array_equal(finals[0], finals[1])  # a batch of different shots (one seed, different noise)


@pytest.mark.parametrize("variant", ["sd15", "sdxl"])
def test_background_generation_paper_on_other_bases(base_variant_models, variant):
    """The paper's workflow on SD1.5 / SDXL inpainting: the workflow's own checkpoint and ControlNet names load
    (ComfyUI detects the base from the random single file), sample, restore and score."""
    comfy = base_variant_models
    name = f"background_generation_paper_{variant}.json"
    prompt = _patched(name)
    assert [n["inputs"]["size"] for n in _load(name).values() if n["class_type"] == "SalientBG_FrameForSD2"] == \
        [1024 if variant == "sdxl" else 512]
    outputs = comfy.run(prompt, timeout=TIMEOUT)
    final = _array(_files(comfy, outputs, "14", 1)[0], "RGB")
    assert final.shape == (512, 512, 3)  # restored to the input photo's size
    text = _score_text(outputs, "16")
    print(f"[paper {variant}] expansion score:", text.replace("\n", " | "))
    assert text.startswith("SAM ")
    log = comfy.log_text()
    assert "missing controlnet keys" not in log and "unexpected controlnet keys" not in log
