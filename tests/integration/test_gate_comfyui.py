"""The quality gate node in a real ComfyUI, over HTTP (see conftest.py for the server), and the two shipped gate
workflows on random-weight models.

1. The node alone: four "generated" PNGs batched with the core ImageBatch, the object mask from LoadImageMask, the
   tiny random SAM (same key layout as Meta's; the loader reads the architecture from the shapes) in ``sams``; the
   ranked batch and the best image saved, the scores JSON shown by the core Preview Any node. Checked: the saved
   images are the inputs in the JSON's order, the best is the first, the JSON's ranking follows its own scores,
   and those scores equal ``score_expansion`` run in this process on the same PNGs with the same checkpoint.
2. ``background_generation_paper_gate.json`` (SD2 + salient ControlNet) and ``sdxl_inpainting_stock_gate.json``
   (stock SDXL inpainting, core InpaintModelConditioning, no ControlNet) with the cost lowered as
   test_workflows_comfyui.py does (its fixtures and patching are reused; a Preview Any node is added to read the
   scores JSON): the best candidate is restored and saved, every candidate previewed, the JSON covers every
   candidate and the node's summary names the best.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_workflows_comfyui import (  # noqa: E402,F401  (fixtures used by name)
    REPEAT, TIMEOUT, _array, _files, _load, _nodes, _patched, _previews, base_models, base_variant_models, sd2_models,
)

WIDTH, HEIGHT, COUNT = 96, 64, 4
CHECKPOINT = "sb_gate_tiny_sam.pth"


@pytest.fixture(scope="module")
def gate_inputs(comfy):
    from sb_testkit.images import object_on_background
    from sb_testkit.sam import save_random_sam

    sam = comfy.models_dir / "sams" / CHECKPOINT
    if not sam.exists():
        save_random_sam(sam.with_suffix(".tmp"), "tiny", seed=0)
        sam.with_suffix(".tmp").rename(sam)
    to8 = lambda a: (a.numpy() * 255).round().astype(np.uint8)  # noqa: E731
    names = []
    for k in range(COUNT):
        image, mask = object_on_background(HEIGHT, WIDTH, seed=10 + k)
        names.append(f"sb_gate_candidate_{k}.png")
        Image.fromarray(to8(image)).save(comfy.input_dir / names[-1])
    Image.fromarray(to8(mask), mode="L").save(comfy.input_dir / "sb_gate_mask.png")
    return names, "sb_gate_mask.png"


def _floats(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def _scores_json(outputs: dict, nid: str) -> dict:
    text = outputs.get(nid, {}).get("text")
    assert text, (nid, outputs.get(nid))
    return json.loads(text[0])


def test_schema_has_a_fixed_seed_and_is_an_output_node(comfy):
    info = comfy.object_info("SalientBG_QualityGate")["SalientBG_QualityGate"]
    assert info["output"] == ["IMAGE", "IMAGE", "STRING"] and info["output_node"] is True
    assert info["input"]["required"]["seed"][1]["control_after_generate"] is False


def test_the_node_ranks_a_batch_in_comfyui(comfy, gate_inputs):
    names, mask = gate_inputs
    graph = {f"load{k}": ("LoadImage", {"image": name}) for k, name in enumerate(names)}
    graph["b1"] = ("ImageBatch", {"image1": ["load0", 0], "image2": ["load1", 0]})
    graph["b2"] = ("ImageBatch", {"image1": ["b1", 0], "image2": ["load2", 0]})
    graph["b3"] = ("ImageBatch", {"image1": ["b2", 0], "image2": ["load3", 0]})
    graph.update({
        "mask": ("LoadImageMask", {"image": mask, "channel": "red"}),
        "sam": ("SalientBG_SAMLoader", {"sam_name": CHECKPOINT}),
        "gate": ("SalientBG_QualityGate", {"sam": ["sam", 0], "images": ["b3", 0], "object_mask": ["mask", 0],
                                           "max_expansion": 0.05, "points": 4, "seed": 1, "mask_choice": "auto"}),
        "ranked": ("SaveImage", {"images": ["gate", 0], "filename_prefix": "sb_gate/ranked"}),
        "best": ("SaveImage", {"images": ["gate", 1], "filename_prefix": "sb_gate/best"}),
        "json": ("PreviewAny", {"source": ["gate", 2]}),
    })
    outputs = comfy.run({nid: {"class_type": ct, "inputs": inp} for nid, (ct, inp) in graph.items()}, timeout=900)
    report = _scores_json(outputs, "json")
    order = [row["batch_index"] for row in report["images"]]
    assert sorted(order) == list(range(COUNT)) and report["best_index"] == order[0]
    keys = [(row["expansion_relative"], -row["iou"]) for row in report["images"]]
    assert keys == sorted(keys)
    assert [row["passed"] for row in report["images"]] == [row["expansion_relative"] <= 0.05
                                                            for row in report["images"]]

    inputs = [_floats(comfy.input_dir / name) for name in names]
    ranked = [_floats(p) for p in comfy.output_files(outputs, "ranked")]
    assert len(ranked) == COUNT and all(torch.equal(r, inputs[i]) for r, i in zip(ranked, order))
    assert torch.equal(_floats(comfy.output_files(outputs, "best")[0]), inputs[order[0]])

    from salient_background.models.networks.sam import load_sam
    from salient_background.models.scoring.expansion import score_expansion

    model = load_sam(str(comfy.models_dir / "sams" / CHECKPOINT)).model
    with Image.open(comfy.input_dir / mask) as im:
        object_mask = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
    expected = score_expansion(model, torch.stack(inputs), object_mask[None], points=4, seed=1).scores
    mine = {row["batch_index"]: row for row in report["images"]}
    for i, score in enumerate(expected):  # same checkpoint, same pixels; a float-rounding pixel flip at most
        assert abs(mine[i]["expansion_px"] - score.expansion_px) <= 0.002 * WIDTH * HEIGHT, (i, mine[i], score)


def _gate_ids(prompt: dict) -> tuple[str, str, str]:
    (gate,) = _nodes(prompt, "SalientBG_QualityGate")
    (save,) = _nodes(prompt, "SaveImage")
    (ranked,) = _nodes(prompt, "PreviewImage")
    return gate, save, ranked


@pytest.mark.parametrize("name", ["background_generation_paper_gate.json", "sdxl_inpainting_stock_gate.json"])
def test_gate_workflows(request, name):
    comfy = request.getfixturevalue("sd2_models" if "paper" in name else "base_variant_models")
    prompt = _patched(name)
    assert [n["inputs"]["amount"] for n in _load(name).values() if n["class_type"] == "RepeatLatentBatch"] == [4]
    gate, save, ranked = _gate_ids(prompt)
    prompt["scores"] = {"class_type": "PreviewAny", "inputs": {"source": [gate, 2]}}  # the JSON, for the test
    outputs = comfy.run(prompt, timeout=TIMEOUT)
    final = _array(_files(comfy, outputs, save, 1)[0], "RGB")
    assert final.shape == (512, 512, 3)  # the best candidate, restored to the photo's size
    previews = _previews(comfy, outputs, ranked, REPEAT)
    report = _scores_json(outputs, "scores")
    print(f"[{name}] gate:", json.dumps({k: report[k] for k in ("best_index", "passed", "gate_failed")}))
    assert len(report["images"]) == REPEAT and all(p.shape == previews[0].shape for p in previews)
    assert outputs[gate]["text"][0].startswith(f"best: image {report['best_index'] + 1} of {REPEAT}")
