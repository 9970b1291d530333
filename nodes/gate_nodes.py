"""The quality gate node: rank a batch of generated images by object expansion (thin adapter over
``models/scoring/gate.py`` and ``models/scoring/expansion.py``)."""
from __future__ import annotations

import json

import torch

from ..models.imaging.image_ops import as_mask_batch, as_rgb_images
from ..models.scoring import expansion as expansion_metric
from ..models.scoring import gate
from . import comfy_glue
from .sam_nodes import EVAL_CATEGORY, SAM_TYPE, _mask_choice_input, _points_input, _seed_input


class QualityGate:
    DESCRIPTION = (
        "Quality gate: scores every image of the batch (e.g. 4 seeds of one prompt) with the object-expansion score "
        "(SAM, one image embedding per image) and returns them ranked, least expanded first (ties: higher SAM IoU), "
        "the best one, and the scores as JSON. An image passes when its expansion is at most max_expansion (a "
        "fraction of the object's area); when none passes the best is still returned and the JSON says "
        "gate_failed. To retry, queue again with other seeds.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_TYPE,),
            "images": ("IMAGE", {"tooltip": "the generated candidates, e.g. a batch of 4 seeds"}),
            "object_mask": ("MASK", {"tooltip": "the object mask the images were generated with (1 = object); one "
                                                "for the batch or one per image"}),
            "max_expansion": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 100.0, "step": 0.005, "tooltip": (
                "pass threshold: SAM's object outside the mask, as a fraction of the object's area (0.05 = 5 %)")}),
            "points": _points_input(8),
            "seed": _seed_input(),
            "mask_choice": _mask_choice_input(),
        }}

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("ranked_images", "best_image", "scores_json")
    OUTPUT_TOOLTIPS = ("the batch, least expanded first", "the least expanded image",
                       "JSON: every image's scores (ranked), whether it passed, gate_failed")
    OUTPUT_NODE = True
    FUNCTION = "rank"
    CATEGORY = EVAL_CATEGORY

    def rank(self, sam, images, object_mask, max_expansion, points, seed, mask_choice):
        images = as_rgb_images(images, what="images")
        masks = as_mask_batch(object_mask, what="object_mask")
        progress = comfy_glue.Progress(images.shape[0])
        model = sam.module()
        with torch.inference_mode():
            run = expansion_metric.score_expansion(model, images, masks, points=points, seed=seed,
                                                   mask_choice=mask_choice, on_image_done=progress.update)
        policy = gate.GatePolicy(candidates=images.shape[0], max_expansion=max_expansion)
        ranked = gate.rank_attempts(gate.attempts_from_scores(run.scores, [None] * images.shape[0], policy))
        order = [a.index for a in ranked]
        report = scores_report(ranked, policy, sam.variant, points, seed, mask_choice)
        device = comfy_glue.intermediate_device()
        ranked_images = images[order].to(device)
        text = json.dumps(report, indent=1)
        return {"ui": {"text": [summary(report)]}, "result": (ranked_images, ranked_images[:1].clone(), text)}


def scores_report(ranked: list, policy: gate.GatePolicy, variant: str, points: int, seed: int, mask_choice: str) -> dict:
    """The node's JSON: settings, best index (in the input batch), gate_failed, and each image's scores, ranked."""
    images = []
    for a in ranked:
        row = a.record()
        row.pop("seed"), row.pop("round"), row.pop("kept")
        images.append({"batch_index": row.pop("attempt"), **row})
    return {"sam": variant, "points": points, "seed": seed, "mask_choice": mask_choice,
            "max_expansion": policy.max_expansion, "best_index": ranked[0].index,
            "passed": sum(bool(a.passed) for a in ranked), "gate_failed": not ranked[0].passed, "images": images}


def summary(report: dict) -> str:
    lines = [f"best: image {report['best_index'] + 1} of {len(report['images'])}; {report['passed']} pass "
             f"max_expansion {report['max_expansion']}" + ("; gate_failed" if report["gate_failed"] else "")]
    for row in report["images"]:
        value = row["expansion_relative"]
        shown = "undefined" if value is None else f"{100 * value:.2f} % of the object"
        lines.append(f"#{row['rank'] + 1}: image {row['batch_index'] + 1}, expansion {shown}, "
                     f"IoU {row['iou'] if row['iou'] is None else round(row['iou'], 3)}"
                     + (", passes" if row["passed"] else ""))
    return "\n".join(lines)


NODE_CLASS_MAPPINGS = {"SalientBG_QualityGate": QualityGate}
NODE_DISPLAY_NAME_MAPPINGS = {"SalientBG_QualityGate": "Quality gate: rank by object expansion (SAM)"}
