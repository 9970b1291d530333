"""Writes the shipped workflows (UI format in ``workflows/``, API-format twins in ``workflows/api/``) and the
Mermaid diagrams of their graphs in workflows/README.md, from the graph descriptions below.

    python workflows/build_workflows.py            # rewrite the files
    python workflows/build_workflows.py --check    # exit 1 if any file is out of date (the tests run this)

Widget values are laid out the way ComfyUI's frontend stores them (see tests/sb_testkit/workflow_check.py).
Every value not set here is the node's default, so the files follow the nodes' schemas: ComfyUI's core nodes from
tests/data/comfyui/object_info.json (regenerate_object_info.py there refreshes it), the pack's from its code.
Model loaders carry the frontend's ``properties.models`` entries (name, url, directory, from
models/model_files/model_registry.py), so a user missing a model sees which file goes where and where to get it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the schema helpers live in the test kit

from sb_testkit import workflow_check  # noqa: E402
from salient_background.models.model_files import model_registry  # noqa: E402

OBJECT_INFO = workflow_check.CORE_OBJECT_INFO

SD2_INPAINT = "512-inpainting-ema.safetensors"
CONTROLNET = "photo-background-generation"
# The other inpainting bases: no salient ControlNet is published for them; the workflows name the folder our trainer's
# export is told to write (python -m salient_background training export <checkpoint> <models/controlnet/NAME>).
SD15_INPAINT = "sd-v1-5-inpainting.ckpt"  # as published in stable-diffusion-v1-5/stable-diffusion-inpainting
SDXL_INPAINT = "sd_xl_1.0_inpainting_0.1.safetensors"  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1 as one file
SD15_CONTROLNET = "salient_controlnet_sd15"
SDXL_CONTROLNET = "salient_controlnet_sdxl"
# Checkpoints the pack does not download (no row in models/model_files/model_registry.py: SDXL inpainting is published
# as a diffusers folder): the workflow's note says what to load, so the loader carries no frontend download entry.
UNREGISTERED_MODELS = {SDXL_INPAINT}
SALIENT_CKPT = "ckpt_base.pth"
SAM_CKPT = "sam_vit_b_01ec64.pth"
EXAMPLE_IMAGE = "example_product.png"
PROMPT = "a perfume bottle on a marble table in a sunlit spa, soft shadows, professional product photo"
NEGATIVE = "lowres, blurry, deformed, watermark, text"

NODE_WIDTH, COLUMN, ROW = 320, 380, 40


class Graph:
    """A small builder for ComfyUI graphs: nodes with widget values, links by output/input name."""

    def __init__(self, schemas: dict, title: str):
        self.schemas = schemas
        self.title = title
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.notes: list[dict] = []

    def add(self, node_type: str, column: float, row: float, title: str | None = None, **widgets) -> dict:
        schema = self.schemas[node_type]
        specs = {name: spec for name, spec, _ in workflow_check._input_specs(schema)}
        values = []
        for name, role in workflow_check.widget_layout(schema):
            spec = specs[name]
            if role == "value":
                if name in widgets:
                    value = widgets.pop(name)
                elif "default" in workflow_check._options(spec):
                    value = workflow_check._options(spec)["default"]
                else:
                    value = spec[0][0] if isinstance(spec[0], list) and spec[0] else ""
                values.append(value)
            elif role == "control":
                values.append("fixed")
            elif role == "filter":
                values.append("")
            else:
                values.append("image")
        if widgets:
            raise KeyError(f"{node_type} has no widgets {sorted(widgets)}")
        inputs = [
            {"name": name, "type": workflow_check._kind(spec), "link": None}
            for name, spec, _ in workflow_check._input_specs(schema) if not workflow_check.is_widget(spec)
        ]
        outputs = [
            {"name": name, "type": kind if not isinstance(kind, list) else "COMBO", "links": []}
            for name, kind in zip(schema.get("output_name") or schema["output"], schema["output"])
        ]
        node = {
            "id": len(self.nodes) + len(self.notes) + 1, "type": node_type,
            "pos": [round(column * COLUMN), round(row * ROW)], "size": [NODE_WIDTH, 60 + 26 * (len(values) + len(inputs))],
            "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": node_type}, "widgets_values": values,
        }
        models = model_entries(node_type, dict(zip([n for n, r in workflow_check.widget_layout(schema)], values)))
        if models:
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def connect(self, source: dict, output: str | int, target: dict, input_name: str) -> None:
        schema = self.schemas[source["type"]]
        names = list(schema.get("output_name") or schema["output"])
        slot = output if isinstance(output, int) else names.index(output)
        target_slot = next(i for i, socket in enumerate(target["inputs"]) if socket["name"] == input_name)
        link_id = len(self.links) + 1
        kind = source["outputs"][slot]["type"]
        self.links.append([link_id, source["id"], slot, target["id"], target_slot, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][target_slot]["link"] = link_id

    def note(self, column: float, row: float, text: str, width: int = 420, height: int = 160) -> None:
        self.notes.append({
            "id": len(self.nodes) + len(self.notes) + 1, "type": "Note", "pos": [round(column * COLUMN), round(row * ROW)],
            "size": [width, height], "flags": {}, "order": 1000 + len(self.notes), "mode": 0, "inputs": [], "outputs": [],
            "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653",
        })

    def ui(self) -> dict:
        for node in self.nodes:  # unconnected outputs are stored as null, as the frontend does
            for output in node["outputs"]:
                output["links"] = output["links"] or None
        nodes = self.nodes + self.notes
        return {
            "last_node_id": max(n["id"] for n in nodes), "last_link_id": len(self.links), "nodes": nodes,
            "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "salient_background": {"title": self.title}}, "version": 0.4,
        }


# ---------------------------------------------------------------------------------------------- model entries
# Loader node type -> the widget naming its model file. The ControlNet loader names a folder (config + weights):
# the frontend's entries are single files it looks up by file name in the folder, so it gets none.
MODEL_WIDGETS = {"CheckpointLoaderSimple": "ckpt_name", "SalientBG_LoadSalientModel": "checkpoint",
                 "SalientBG_SAMLoader": "sam_name"}


def model_entries(node_type: str, widget_values: dict) -> list[dict]:
    """The frontend's ``properties.models`` of a loader: [{name, url, directory}] for its model file."""
    widget = MODEL_WIDGETS.get(node_type)
    if widget is None or widget_values[widget] in UNREGISTERED_MODELS:
        return []
    rows = model_registry.lookup(widget_values[widget])
    if len(rows) != 1 or rows[0].filename != widget_values[widget]:
        raise KeyError(f"{node_type}: {widget_values[widget]!r} is not one file of models/model_files/model_registry.py")
    return [{"name": rows[0].filename, "url": rows[0].urls[0], "directory": rows[0].folder}]


# ---------------------------------------------------------------------------------------------- the graphs
MODEL_NOTE = (
    "Models (see the README's Models table; `python -m salient_background download` fetches them):\n"
    f"- {SD2_INPAINT} -> models/checkpoints (SD2 inpainting, CreativeML Open RAIL++-M)\n"
    f"- {CONTROLNET}/ (the ControlNet folder from yahoo-inc/photo-background-generation) -> models/controlnet (Apache-2.0)\n"
    f"- {SALIENT_CKPT} -> models/salient (InSPyReNet via transparent-background, MIT)\n"
    f"- {SAM_CKPT} -> models/sams (Meta SAM ViT-B, Apache-2.0)"
)


def _sd2_background(g: Graph, image, object_mask, row0: float, strength: float = 1.0, seed: int = 42, title: str = "",
                    checkpoint: str = SD2_INPAINT, controlnet_name: str = CONTROLNET, candidates: int = 1):
    """Checkpoint + prompts + salient ControlNet conditioning + sampler + decode (``candidates`` > 1: that many
    seeds at once through Repeat Latent Batch). Returns (decoded, loaders)."""
    ckpt = g.add("CheckpointLoaderSimple", 2, row0, ckpt_name=checkpoint)
    controlnet = g.add("SalientBG_ControlNetLoader", 2, row0 + 4, controlnet=controlnet_name)
    positive = g.add("CLIPTextEncode", 3, row0, title="Prompt (the new background)", text=PROMPT)
    negative = g.add("CLIPTextEncode", 3, row0 + 6, title="Negative prompt", text=NEGATIVE)
    g.connect(ckpt, "CLIP", positive, "clip")
    g.connect(ckpt, "CLIP", negative, "clip")
    cond = g.add("SalientBG_ControlNetConditioning", 4, row0, title=title or None, strength=strength)
    for source, output, name in ((positive, 0, "positive"), (negative, 0, "negative"), (controlnet, 0, "control_net"),
                                 (ckpt, "VAE", "vae"), (image, "image", "image"), (object_mask, "object_mask", "object_mask")):
        g.connect(source, output, cond, name)
    sampler = g.add("KSampler", 5, row0, seed=seed, steps=20, cfg=7.5, sampler_name="uni_pc", scheduler="normal")
    g.connect(ckpt, "MODEL", sampler, "model")
    g.connect(cond, "positive", sampler, "positive")
    g.connect(cond, "negative", sampler, "negative")
    latent = cond
    if candidates > 1:
        latent = g.add("RepeatLatentBatch", 4, row0 + 10, title="Candidates (seeds at once)", amount=candidates)
        g.connect(cond, "latent", latent, "samples")
    g.connect(latent, "latent" if latent is cond else 0, sampler, "latent_image")
    decode = g.add("VAEDecode", 6, row0)
    g.connect(sampler, 0, decode, "samples")
    g.connect(ckpt, "VAE", decode, "vae")
    return decode, ckpt, cond


def paper_workflow(schemas, variant: str = "sd2") -> Graph:
    """The paper's graph; ``variant`` "sd15" / "sdxl" swaps in that inpainting base, its ControlNet and canvas size."""
    setup = PAPER_VARIANTS[variant]
    g = Graph(schemas, setup["title"])
    g.note(0, -5, setup["note"], width=760, height=setup.get("note_height", 200))
    photo = g.add("LoadImage", 0, 0, image=EXAMPLE_IMAGE)
    salient_model = g.add("SalientBG_LoadSalientModel", 0, 9, checkpoint=SALIENT_CKPT)
    salient = g.add("SalientBG_SalientMask", 1, 0)
    g.connect(salient_model, 0, salient, "salient_model")
    g.connect(photo, "IMAGE", salient, "image")
    frame = g.add("SalientBG_FrameForSD2", 1, 8, title=setup.get("frame_title"), size=setup["size"])
    g.connect(photo, "IMAGE", frame, "image")
    g.connect(salient, "object_mask", frame, "object_mask")
    decoded, _, _ = _sd2_background(g, frame, frame, 0, checkpoint=setup["checkpoint"], controlnet_name=setup["controlnet"])
    restore = g.add("SalientBG_RestoreFrame", 7, 0)
    g.connect(decoded, 0, restore, "image")
    g.connect(frame, "frame", restore, "frame")
    g.connect(photo, "IMAGE", restore, "original_image")
    save = g.add("SaveImage", 8, 0, filename_prefix=setup["prefix"])
    g.connect(restore, "image", save, "images")
    sam = g.add("SalientBG_SAMLoader", 6, 8, sam_name=SAM_CKPT)
    score = g.add("SalientBG_ObjectExpansionScore", 7, 8)
    g.connect(sam, 0, score, "sam")
    g.connect(frame, "object_mask", score, "object_mask")
    g.connect(decoded, 0, score, "generated_image")
    overlay = g.add("PreviewImage", 8, 8, title="Expansion overlay (green kept, red expansion, blue lost)")
    g.connect(score, "overlay", overlay, "images")
    return g


GATE_CANDIDATES = 4
GATE_NOTE = (
    "Quality gate: the {count} candidates (seeds at once, Repeat Latent Batch) are scored with the object-expansion "
    "score (SAM, one image embedding each) and ranked, least expanded first; the best one is restored to the "
    "photo's size and saved, all of them are previewed in rank order. The node shows a summary of the scores (its "
    "scores_json output has every score as JSON); an image passes when its expansion is at most max_expansion "
    "(0.05 = 5 % of the object's area) and gate_failed says that none did: queue again (the sampler's seed) for new "
    "candidates.\n"
)


def _gate_tail(g: Graph, decoded, frame, photo, column: float, row: float, prefix: str) -> None:
    """Quality gate on the decoded candidates: the best restored and saved, every candidate previewed ranked."""
    sam = g.add("SalientBG_SAMLoader", column, row + 8, sam_name=SAM_CKPT)
    quality_gate = g.add("SalientBG_QualityGate", column, row)
    g.connect(sam, 0, quality_gate, "sam")
    g.connect(decoded, 0, quality_gate, "images")
    g.connect(frame, "object_mask", quality_gate, "object_mask")
    restore = g.add("SalientBG_RestoreFrame", column + 1, row)
    g.connect(quality_gate, "best_image", restore, "image")
    g.connect(frame, "frame", restore, "frame")
    g.connect(photo, "IMAGE", restore, "original_image")
    save = g.add("SaveImage", column + 2, row, title="Least expanded candidate", filename_prefix=prefix)
    g.connect(restore, "image", save, "images")
    ranked = g.add("PreviewImage", column + 1, row + 8, title="Every candidate, least expanded first")
    g.connect(quality_gate, "ranked_images", ranked, "images")


def _masked_photo(g: Graph, size: int):
    """Photo -> salient mask -> framed into the ``size`` canvas. Returns (photo, frame)."""
    photo = g.add("LoadImage", 0, 0, image=EXAMPLE_IMAGE)
    salient_model = g.add("SalientBG_LoadSalientModel", 0, 9, checkpoint=SALIENT_CKPT)
    salient = g.add("SalientBG_SalientMask", 1, 0)
    g.connect(salient_model, 0, salient, "salient_model")
    g.connect(photo, "IMAGE", salient, "image")
    frame = g.add("SalientBG_FrameForSD2", 1, 8, title=f"Frame ({size})" if size != 512 else None, size=size)
    g.connect(photo, "IMAGE", frame, "image")
    g.connect(salient, "object_mask", frame, "object_mask")
    return photo, frame


def paper_gate_workflow(schemas) -> Graph:
    """The paper's SD2 graph making 4 candidates at once, the least expanded kept."""
    g = Graph(schemas, "The paper's workflow with a quality gate (4 candidates, the least expanded kept)")
    g.note(0, -5, "The paper's workflow (SD2 inpainting + salient ControlNet, UniPC, 20 steps, CFG 7.5) with a quality "
                  "gate. " + GATE_NOTE.format(count=GATE_CANDIDATES) + MODEL_NOTE, width=760, height=260)
    photo, frame = _masked_photo(g, 512)
    decoded, _, _ = _sd2_background(g, frame, frame, 0, candidates=GATE_CANDIDATES)
    _gate_tail(g, decoded, frame, photo, 7, 0, "salient_background/paper_gate")
    return g


def sdxl_stock_gate_workflow(schemas) -> Graph:
    """Stock SDXL inpainting (core nodes, no ControlNet), 4 candidates at once, the least expanded kept."""
    g = Graph(schemas, "Stock SDXL inpainting with a quality gate (no ControlNet, 4 candidates)")
    g.note(0, -5, "Stock SDXL inpainting, no ControlNet: ComfyUI's own InpaintModelConditioning repaints the "
                  "background (the salient mask inverted: 1 = repaint) of the photo framed at 1024. No salient "
                  "ControlNet is published for SDXL, so the gate is what guards the object here. "
                  + GATE_NOTE.format(count=GATE_CANDIDATES) + "Models:\n"
                  f"- {SDXL_INPAINT} -> models/checkpoints (diffusers/stable-diffusion-xl-1.0-inpainting-0.1 saved as "
                  "one single-file checkpoint under this name, or pick your own SDXL inpainting checkpoint; "
                  "CreativeML Open RAIL++-M)\n"
                  f"- {SALIENT_CKPT} -> models/salient (InSPyReNet via transparent-background, MIT)\n"
                  f"- {SAM_CKPT} -> models/sams (Meta SAM ViT-B, Apache-2.0)", width=760, height=300)
    photo, frame = _masked_photo(g, 1024)
    repaint = g.add("InvertMask", 1, 16, title="Repaint mask (1 = background)")
    g.connect(frame, "object_mask", repaint, "mask")
    ckpt = g.add("CheckpointLoaderSimple", 2, 0, ckpt_name=SDXL_INPAINT)
    positive = g.add("CLIPTextEncode", 3, 0, title="Prompt (the new background)", text=PROMPT)
    negative = g.add("CLIPTextEncode", 3, 6, title="Negative prompt", text=NEGATIVE)
    g.connect(ckpt, "CLIP", positive, "clip")
    g.connect(ckpt, "CLIP", negative, "clip")
    cond = g.add("InpaintModelConditioning", 4, 0)
    for source, output, name in ((positive, 0, "positive"), (negative, 0, "negative"), (ckpt, "VAE", "vae"),
                                 (frame, "image", "pixels"), (repaint, 0, "mask")):
        g.connect(source, output, cond, name)
    repeat = g.add("RepeatLatentBatch", 4, 10, title="Candidates (seeds at once)", amount=GATE_CANDIDATES)
    g.connect(cond, "latent", repeat, "samples")
    sampler = g.add("KSampler", 5, 0, seed=42, steps=20, cfg=7.5, sampler_name="uni_pc", scheduler="normal")
    g.connect(ckpt, "MODEL", sampler, "model")
    g.connect(cond, "positive", sampler, "positive")
    g.connect(cond, "negative", sampler, "negative")
    g.connect(repeat, 0, sampler, "latent_image")
    decode = g.add("VAEDecode", 6, 0)
    g.connect(sampler, 0, decode, "samples")
    g.connect(ckpt, "VAE", decode, "vae")
    _gate_tail(g, decode, frame, photo, 7, 0, "salient_background/sdxl_gate")
    return g


def comparison_workflow(schemas) -> Graph:
    g = Graph(schemas, "SI2 vs SI2 + salient ControlNet")
    g.note(0, -5, "SI2 vs SI2 + ControlNet: the same photo, prompt and seed through SD2 inpainting alone (ControlNet "
                  "strength 0 = the paper's SI2 baseline) and with the salient ControlNet (strength 1). Compare the "
                  "expansion scores and overlays side by side; the paper reports 3.6x less expansion with the "
                  "ControlNet on average.\n" + MODEL_NOTE, width=760, height=200)
    photo = g.add("LoadImage", 0, 0, image=EXAMPLE_IMAGE)
    salient_model = g.add("SalientBG_LoadSalientModel", 0, 9, checkpoint=SALIENT_CKPT)
    salient = g.add("SalientBG_SalientMask", 1, 0)
    g.connect(salient_model, 0, salient, "salient_model")
    g.connect(photo, "IMAGE", salient, "image")
    frame = g.add("SalientBG_FrameForSD2", 1, 8)
    g.connect(photo, "IMAGE", frame, "image")
    g.connect(salient, "object_mask", frame, "object_mask")
    sam = g.add("SalientBG_SAMLoader", 6, 22, sam_name=SAM_CKPT)
    for index, (strength, row, label) in enumerate(((1.0, 0, "SI2 + ControlNet"), (0.0, 12, "SI2 baseline (strength 0)"))):
        decoded, _, _ = _sd2_background(g, frame, frame, row, strength=strength, seed=42, title=label)
        save = g.add("SaveImage", 8, row, filename_prefix=f"salient_background/compare_{'controlnet' if strength else 'si2'}")
        g.connect(decoded, 0, save, "images")
        score = g.add("SalientBG_ObjectExpansionScore", 7, row + 6, title=f"Expansion: {label}")
        g.connect(sam, 0, score, "sam")
        g.connect(frame, "object_mask", score, "object_mask")
        g.connect(decoded, 0, score, "generated_image")
        overlay = g.add("PreviewImage", 8, row + 6, title=f"Overlay: {label}")
        g.connect(score, "overlay", overlay, "images")
    return g


def product_workflow(schemas) -> Graph:
    g = Graph(schemas, "Product shots: SAM-refined mask, crop around the object, 4 seeds, paste-back")
    g.note(0, -5, "Product shots: the salient mask refined with SAM, framed by cropping around the object with a "
                  "margin, 4 seeds at once (Repeat Latent Batch), the original object pasted back with a feathered "
                  "seam, and restored into the photo.\nSet: the photo, the prompt, the number of seeds.\n" + MODEL_NOTE,
           width=760, height=200)
    photo = g.add("LoadImage", 0, 0, image=EXAMPLE_IMAGE)
    salient_model = g.add("SalientBG_LoadSalientModel", 0, 9, checkpoint=SALIENT_CKPT)
    salient = g.add("SalientBG_SalientMask", 1, 0, mask_type="binary")
    g.connect(salient_model, 0, salient, "salient_model")
    g.connect(photo, "IMAGE", salient, "image")
    sam = g.add("SalientBG_SAMLoader", 0, 14, sam_name=SAM_CKPT)
    refine = g.add("SalientBG_SAMRefineMask", 1, 8)
    g.connect(sam, 0, refine, "sam")
    g.connect(photo, "IMAGE", refine, "image")
    g.connect(salient, "object_mask", refine, "object_mask")
    frame = g.add("SalientBG_FrameForSD2", 1, 18, mode="crop around object")
    g.connect(photo, "IMAGE", frame, "image")
    g.connect(refine, "object_mask", frame, "object_mask")
    ckpt = g.add("CheckpointLoaderSimple", 2, 0, ckpt_name=SD2_INPAINT)
    controlnet = g.add("SalientBG_ControlNetLoader", 2, 4, controlnet=CONTROLNET)
    positive = g.add("CLIPTextEncode", 3, 0, title="Prompt (the new background)", text=PROMPT)
    negative = g.add("CLIPTextEncode", 3, 6, title="Negative prompt", text=NEGATIVE)
    g.connect(ckpt, "CLIP", positive, "clip")
    g.connect(ckpt, "CLIP", negative, "clip")
    cond = g.add("SalientBG_ControlNetConditioning", 4, 0)
    for source, output, name in ((positive, 0, "positive"), (negative, 0, "negative"), (controlnet, 0, "control_net"),
                                 (ckpt, "VAE", "vae"), (frame, "image", "image"), (frame, "object_mask", "object_mask")):
        g.connect(source, output, cond, name)
    repeat = g.add("RepeatLatentBatch", 4, 10, title="Seeds per object", amount=4)
    g.connect(cond, "latent", repeat, "samples")
    sampler = g.add("KSampler", 5, 0, seed=7, steps=20, cfg=7.5, sampler_name="uni_pc", scheduler="normal")
    g.connect(ckpt, "MODEL", sampler, "model")
    g.connect(cond, "positive", sampler, "positive")
    g.connect(cond, "negative", sampler, "negative")
    g.connect(repeat, 0, sampler, "latent_image")
    decode = g.add("VAEDecode", 6, 0)
    g.connect(sampler, 0, decode, "samples")
    g.connect(ckpt, "VAE", decode, "vae")
    paste = g.add("SalientBG_PasteObjectBack", 7, 0)
    g.connect(decode, 0, paste, "image")
    g.connect(frame, "image", paste, "original_image")
    g.connect(frame, "object_mask", paste, "object_mask")
    restore = g.add("SalientBG_RestoreFrame", 8, 0)
    g.connect(paste, 0, restore, "image")
    g.connect(frame, "frame", restore, "frame")
    g.connect(photo, "IMAGE", restore, "original_image")
    save = g.add("SaveImage", 9, 0, filename_prefix="salient_background/product")
    g.connect(restore, "image", save, "images")
    return g


def cutout_workflow(schemas) -> Graph:
    g = Graph(schemas, "Cut-out: salient mask + refinement -> RGBA")
    g.note(0, -5, "Cut-out: the salient object of every image in the batch, refined (holes filled, largest part, "
                  "1 px feather), saved as RGBA PNG together with its mask. For a folder of images use a batch "
                  "loader or the command line: python -m salient_background mask <folder> --checkpoint ckpt_base.pth\n"
                  f"Models: {SALIENT_CKPT} -> models/salient (InSPyReNet via transparent-background, MIT)",
           width=760, height=160)
    photo = g.add("LoadImage", 0, 0, image=EXAMPLE_IMAGE)
    salient_model = g.add("SalientBG_LoadSalientModel", 0, 9, checkpoint=SALIENT_CKPT)
    salient = g.add("SalientBG_SalientMask", 1, 0)
    g.connect(salient_model, 0, salient, "salient_model")
    g.connect(photo, "IMAGE", salient, "image")
    refine = g.add("SalientBG_MaskRefine", 2, 0, fill_holes=True, keep_largest=1, feather=1)
    g.connect(salient, "object_mask", refine, "mask")
    invert = g.add("InvertMask", 2, 8, title="1 = background (Join Image with Alpha uses 1 - mask)")
    g.connect(refine, 0, invert, "mask")
    join = g.add("JoinImageWithAlpha", 3, 0)
    g.connect(photo, "IMAGE", join, "image")
    g.connect(invert, 0, join, "alpha")
    save = g.add("SaveImage", 4, 0, filename_prefix="salient_background/cutout")
    g.connect(join, 0, save, "images")
    mask_image = g.add("MaskToImage", 3, 8)
    g.connect(refine, 0, mask_image, "mask")
    save_mask = g.add("SaveImage", 4, 8, filename_prefix="salient_background/cutout_mask")
    g.connect(mask_image, 0, save_mask, "images")
    return g


def _base_note(title: str, base: str, checkpoint: str, where: str, controlnet: str, size: int) -> str:
    return (
        f"The paper's workflow on {title}: salient mask (soft) -> {size} letterbox -> {title} + a salient ControlNet "
        f"trained for it (strength 1.0) -> UniPC, 20 steps, CFG 7.5 -> restore to the photo's size -> object "
        "expansion score.\n"
        f"NEEDS a salient ControlNet trained for {title}: none is published (the paper's is for SD2). Train one with "
        f"python -m salient_background training train --base {base} ... and export it with python -m "
        f"salient_background training export <checkpoint> <ComfyUI>/models/controlnet/{controlnet}\n"
        "Set: the photo in Load Image, the prompt.\nModels:\n"
        f"- {checkpoint} -> models/checkpoints ({where})\n"
        f"- {controlnet}/ (your exported salient ControlNet for {title}) -> models/controlnet\n"
        f"- {SALIENT_CKPT} -> models/salient (InSPyReNet via transparent-background, MIT)\n"
        f"- {SAM_CKPT} -> models/sams (Meta SAM ViT-B, Apache-2.0)"
    )


PAPER_VARIANTS = {
    "sd2": dict(
        title="Background generation as in the paper", size=512, checkpoint=SD2_INPAINT, controlnet=CONTROLNET,
        prefix="salient_background/paper",
        note="Background generation as in the paper (arXiv 2404.10157): salient mask (soft) -> 512 letterbox -> "
             "SD2 inpainting + salient ControlNet (strength 1.0) -> UniPC, 20 steps, CFG 7.5 -> restore to the "
             "photo's size -> object expansion score.\nSet: the photo in Load Image, the prompt.\n" + MODEL_NOTE),
    "sd15": dict(
        title="The paper's workflow on SD1.5 inpainting", size=512, checkpoint=SD15_INPAINT, controlnet=SD15_CONTROLNET,
        prefix="salient_background/paper_sd15", frame_title="Frame (512 for SD1.5)", note_height=260,
        note=_base_note("Stable Diffusion 1.5 inpainting", "sd15-inpainting", SD15_INPAINT,
                        "stable-diffusion-v1-5/stable-diffusion-inpainting, CreativeML Open RAIL-M; "
                        "python -m salient_background download sd15 fetches it",
                        SD15_CONTROLNET, 512)),
    "sdxl": dict(
        title="The paper's workflow on SDXL inpainting", size=1024, checkpoint=SDXL_INPAINT, controlnet=SDXL_CONTROLNET,
        prefix="salient_background/paper_sdxl", frame_title="Frame (1024 for SDXL)", note_height=280,
        note=_base_note("Stable Diffusion XL inpainting", "sdxl-inpainting", SDXL_INPAINT,
                        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1 saved as one single-file checkpoint under "
                        "this name, or pick your own SDXL inpainting checkpoint in Load Checkpoint; "
                        "CreativeML Open RAIL++-M", SDXL_CONTROLNET, 1024)),
}


WORKFLOWS = {
    "background_generation_paper": paper_workflow,
    "background_generation_paper_sd15": lambda schemas: paper_workflow(schemas, "sd15"),
    "background_generation_paper_sdxl": lambda schemas: paper_workflow(schemas, "sdxl"),
    "compare_si2_vs_controlnet": comparison_workflow,
    "product_shots_sam_crop_pasteback": product_workflow,
    "cutout_rgba_batch": cutout_workflow,
    "background_generation_paper_gate": paper_gate_workflow,
    "sdxl_inpainting_stock_gate": sdxl_stock_gate_workflow,
}


# ---------------------------------------------------------------------------------------------- diagrams
def mermaid(ui: dict, schemas: dict) -> str:
    """A Mermaid flowchart of a UI-format workflow (GitHub renders it in workflows/README.md)."""
    lines = ["```mermaid", "flowchart LR"]
    for node in ui["nodes"]:
        if node["type"] in workflow_check.FRONTEND_ONLY:
            continue
        label = node.get("title") or schemas[node["type"]].get("display_name") or node["type"]
        lines.append(f'    n{node["id"]}["{label.replace(chr(34), chr(39))}"]')
    for link in ui["links"]:
        lines.append(f"    n{link[1]} -- {link[5]} --> n{link[3]}")
    lines.append("```")
    return "\n".join(lines)


def render(schemas: dict) -> dict[str, str]:
    """{relative path: content} of every generated file (the workflows, their API twins and workflows/README.md)."""
    files, diagrams = {}, []
    for name, build in WORKFLOWS.items():
        graph = build(schemas)
        ui = graph.ui()
        files[f"workflows/{name}.json"] = json.dumps(ui, indent=1) + "\n"
        api = workflow_check.ui_to_api(ui, schemas)
        files[f"workflows/api/{name}.json"] = json.dumps(api, indent=1) + "\n"
        diagrams.append(f"## `{name}.json` — {graph.title}\n\n{mermaid(ui, schemas)}\n")
    files["workflows/README.md"] = DIAGRAMS_HEADER + "\n".join(diagrams)
    return files


DIAGRAMS_HEADER = """# Workflow diagrams

Generated by `python workflows/build_workflows.py` from the workflow files in this folder (do not edit by hand).
What each workflow is for and which models it needs: the "Workflows" section of the top-level README.

"""


def apply(files: dict[str, str], check: bool) -> list[str]:
    stale = []
    for rel, content in files.items():
        path = os.path.join(ROOT, rel)
        old = open(path).read() if os.path.exists(path) else None
        if old != content:
            stale.append(rel)
            if not check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").write(content)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date files instead of writing them")
    parser.add_argument("--object-info", default=OBJECT_INFO)
    args = parser.parse_args(argv)
    schemas = workflow_check.load_schemas(args.object_info)
    stale = apply(render(schemas), args.check)
    for rel in stale:
        print(("out of date: " if args.check else "wrote ") + rel)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
