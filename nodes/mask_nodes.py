"""Mask refinement on any MASK (threshold, fill holes, largest components, grow/shrink, feather, invert)."""
from __future__ import annotations

import torch

from ..models.imaging import mask_ops
from . import comfy_glue


class MaskRefine:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Any MASK; the polarity is kept unless 'invert' is on."}),
                "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "0 keeps the mask soft; otherwise pixels >= threshold become 1, the rest 0."}),
                "grow": ("INT", {"default": 0, "min": -512, "max": 512, "step": 1,
                                 "tooltip": "Grow (> 0) or shrink (< 0) by this many pixels, with a round (disk) brush."}),
                "feather": ("INT", {"default": 0, "min": 0, "max": 256, "step": 1,
                                    "tooltip": "Soften the edge over about this many pixels on each side."}),
                "fill_holes": ("BOOLEAN", {"default": False, "tooltip": "Fill regions enclosed by the mask."}),
                "keep_largest": ("INT", {"default": 0, "min": 0, "max": 64,
                                         "tooltip": "Keep only the N largest connected parts (0 keeps all)."}),
                "invert": ("BOOLEAN", {"default": False, "tooltip": "Output 1 - mask (last step)."}),
            }
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    FUNCTION = "refine"
    CATEGORY = "Salient Background/mask"
    DESCRIPTION = "Threshold -> fill holes -> keep largest parts -> grow/shrink -> feather -> invert, on every mask of a batch."

    def refine(self, mask, threshold=0.0, grow=0, feather=0, fill_holes=False, keep_largest=0, invert=False):
        comfy_glue.refuse_nan(threshold=threshold)
        progress = comfy_glue.Progress(1)
        out = mask_ops.refine(mask, threshold_at=threshold, fill=fill_holes, keep_largest=keep_largest,
                              grow_by=grow, feather_by=feather, invert_result=invert)
        progress.update(1)
        return (out.to(comfy_glue.intermediate_device()),)


NODE_CLASS_MAPPINGS = {"SalientBG_MaskRefine": MaskRefine}
NODE_DISPLAY_NAME_MAPPINGS = {"SalientBG_MaskRefine": "Mask Refine (threshold, grow, feather, holes)"}
