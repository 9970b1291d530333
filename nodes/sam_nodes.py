"""SAM nodes: loader, mask refinement, and the object-expansion score (thin adapters over ``models/networks/sam`` and
``models/scoring/expansion.py``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..models.scoring import expansion as expansion_metric
from ..models.imaging.image_ops import as_mask_batch, as_rgb_images
from ..models.model_files.model_cache import ModelCache
from ..models.networks.salient import RESIZE_POLICIES as SALIENT_RESIZE_POLICIES
from ..models.networks.sam import MASK_CHOICES, REFINE_MODES, WHERE_TO_GET, SamArchitecture, load_sam, refine_masks
from . import comfy_glue
from . import CATEGORY as ROOT_CATEGORY

log = logging.getLogger("salient_background")

SAM_TYPE = "SALIENT_BG_SAM"  # our own socket type (other packs' SAM_MODEL objects are different things)
SAM_FOLDER = "sams"
CATEGORY = f"{ROOT_CATEGORY}/SAM"
EVAL_CATEGORY = f"{ROOT_CATEGORY}/evaluation"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


class OffloadableSam(torch.nn.Module):
    """Container handed to ComfyUI's ModelPatcher: the patcher assigns ``model.device``, which ``Sam`` defines as a
    read-only property, so the patcher holds this plain module with the SAM network inside."""

    def __init__(self, sam: torch.nn.Module):
        super().__init__()
        self.sam = sam


@dataclass
class SamHandle:
    """What travels on a ``SALIENT_BG_SAM`` socket: the network (wrapped in a ComfyUI ModelPatcher when running
    inside ComfyUI, so model management can offload it) and what the loader learnt about it."""

    wrapped: Any
    architecture: SamArchitecture
    path: str

    @property
    def variant(self) -> str:
        return self.architecture.variant

    def module(self) -> torch.nn.Module:
        """The SAM network on ComfyUI's compute device (loads it there, offloading others if needed)."""
        return comfy_glue.load_on_device(self.wrapped).sam


# Loaded SAMs survive graph edits; a replaced file is reloaded.
_MODELS: ModelCache[SamHandle] = ModelCache(size=2, name="sam")


def load_sam_cached(path: str) -> SamHandle:
    """Load (or reuse) the SAM at ``path``; a file changed on disk is reloaded."""

    def load() -> SamHandle:
        loaded = load_sam(path)
        log.info("loaded SAM %s from %s", loaded.architecture.describe(), path)
        wrapped = comfy_glue.wrap_for_offload(OffloadableSam(loaded.model))
        return SamHandle(wrapped=wrapped, architecture=loaded.architecture, path=path)

    # the ModelPatcher that wrap_for_offload makes is bound to ComfyUI's compute device
    return _MODELS.get(path, (str(comfy_glue.torch_device()),), load)


def _seed_input():
    # control_after_generate False, said explicitly: ComfyUI's frontend gives an INT named "seed" a
    # "control after generate" widget (default: randomize) unless the schema says otherwise, which would
    # change the points, hence the score, on every queue and shift the widget values of saved workflows.
    return ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": False,
                    "tooltip": "seed of the point sampling (same seed and mask -> same points)"})


def _points_input(default: int = 8):
    return ("INT", {"default": default, "min": 1, "max": 64,
                    "tooltip": "positive points sampled inside the mask, spread by interior distance"})


def _mask_choice_input():
    return (list(MASK_CHOICES), {"default": "auto", "tooltip": (
        "which SAM output to keep: auto = single-output token for several prompts, highest predicted IoU of the "
        "three outputs for one point; best_score / largest = always three outputs; single = always one")})


class SAMLoader:
    DESCRIPTION = ("Load Meta's Segment Anything checkpoint (sam_vit_b/l/h .pth) from models/sams; the variant is "
                   "read from the weights, not the file name.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sam_name": (comfy_glue.list_model_files(SAM_FOLDER), {"tooltip": "file in models/sams"})}}

    RETURN_TYPES = (SAM_TYPE,)
    RETURN_NAMES = ("sam",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, sam_name):
        return comfy_glue.validate_model_choice(lambda: cls.resolve(sam_name))

    @staticmethod
    def resolve(sam_name: str) -> str:
        return comfy_glue.resolve_model_file(SAM_FOLDER, sam_name, where_to_get=WHERE_TO_GET)

    def load(self, sam_name):
        return (load_sam_cached(self.resolve(sam_name)),)


class SAMRefineMask:
    DESCRIPTION = ("Refine an object mask with SAM prompted by points spread inside it (plus, optionally, points "
                   "just outside it and its bounding box). One image embedding per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_TYPE,),
            "image": ("IMAGE",),
            "object_mask": ("MASK", {"tooltip": "1 = object; one mask for the whole batch or one per image"}),
            "mode": (list(REFINE_MODES), {"default": "replace", "tooltip": (
                "replace: SAM's mask; intersect: min(input, SAM); union: max(input, SAM)")}),
            "points": _points_input(8),
            "seed": _seed_input(),
            "negative_points": ("BOOLEAN", {"default": True, "tooltip": (
                "also give SAM points / 2 background points in a band just outside the mask")}),
            "box": ("BOOLEAN", {"default": False, "tooltip": "also give SAM the mask's bounding box"}),
            "mask_choice": _mask_choice_input(),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("object_mask",)
    FUNCTION = "refine"
    CATEGORY = CATEGORY

    def refine(self, sam, image, object_mask, mode, points, seed, negative_points, box, mask_choice):
        images = as_rgb_images(image, what="image")
        progress = comfy_glue.Progress(images.shape[0])
        model = sam.module()
        refined = refine_masks(model, images, object_mask, mode=mode, points=points, seed=seed,
                               negative=negative_points, box=box, mask_choice=mask_choice,
                               on_image_done=progress.update)
        return (refined.to(comfy_glue.intermediate_device()),)


class ObjectExpansionScore:
    DESCRIPTION = (
        "Object expansion (arXiv 2404.10157): E = area(m_o ∪ m_i) − area(m_i), m_i the object mask given, m_o SAM's "
        "mask of the object in the generated image, SAM prompted with points sampled inside m_i. Per image: E "
        "relative to the object, as a fraction of the image, in pixels; SAM's mask; an overlay (green kept, red "
        "expansion, blue lost, yellow prompt points). An empty mask gives NaN.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_TYPE,),
            "object_mask": ("MASK", {"tooltip": "m_i, the object mask of the original (1 = object); one for the batch or one per image"}),
            "generated_image": ("IMAGE", {"tooltip": "the generated image(s), e.g. 4 seeds of one prompt"}),
            "points": _points_input(8),
            "seed": _seed_input(),
            "mask_choice": _mask_choice_input(),
        }}

    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "MASK", "IMAGE")
    RETURN_NAMES = ("expansion_relative", "expansion_image_fraction", "expansion_pixels", "sam_object_mask", "overlay")
    OUTPUT_IS_LIST = (True, True, True, False, False)
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = EVAL_CATEGORY

    def score(self, sam, object_mask, generated_image, points, seed, mask_choice):
        images = as_rgb_images(generated_image, what="generated_image")
        masks = as_mask_batch(object_mask, what="object_mask")
        progress = comfy_glue.Progress(images.shape[0])
        model = sam.module()
        run = expansion_metric.score_expansion(model, images, masks, points=points, seed=seed,
                                               mask_choice=mask_choice, on_image_done=progress.update)
        picture = expansion_metric.overlay(images, run.object_masks, run.sam_masks, run.points)
        text = f"SAM {sam.variant}, {points} points, seed {seed}, mask choice {mask_choice}\n"
        text += expansion_metric.summary_text(run.scores)
        device = comfy_glue.intermediate_device()
        result = (
            [s.expansion_relative for s in run.scores],
            [s.expansion_image_fraction for s in run.scores],
            [s.expansion_px for s in run.scores],
            run.sam_masks.float().to(device),
            picture.to(device),
        )
        return {"ui": {"text": [text]}, "result": result}


class SignedSalientAreaChange:
    DESCRIPTION = (
        "The reference notebook's signed variant of object expansion: mean(m_o > 127) - mean(m_i > 127) on 8-bit maps, "
        "m_o the salient model's (InSPyReNet) map of each generated image, m_i the salient mask of the original. "
        "A difference of object-area fractions: positive = the object grew. Not the paper's SAM-based score.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "salient_model": ("SALIENT_MODEL",),
            "object_mask": ("MASK", {"tooltip": "m_i: the salient mask of the original (1 = object); one for the batch or one per image"}),
            "generated_image": ("IMAGE",),
            "resize": (list(SALIENT_RESIZE_POLICIES), {"default": "auto", "tooltip": (
                "salient model resize policy, as in Salient Object Mask: auto = transparent-background 1.2.12 "
                "(the paper's pin) for the loaded mode")}),
        }}

    RETURN_TYPES = ("FLOAT", "MASK")
    RETURN_NAMES = ("signed_area_change", "generated_salient_mask")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_NODE = True
    FUNCTION = "score"
    CATEGORY = EVAL_CATEGORY

    def score(self, salient_model, object_mask, generated_image, resize):
        images = as_rgb_images(generated_image, what="generated_image")
        masks = as_mask_batch(object_mask, what="object_mask")
        progress = comfy_glue.Progress(images.shape[0])
        maps = []
        for i in range(images.shape[0]):
            maps.append(salient_model.predict(images[i:i + 1], resize).maps.float().cpu())
            progress.update()
        maps = torch.cat(maps)
        values = expansion_metric.signed_salient_change(masks, maps)
        lines = [f"image {k + 1}/{len(values)}: " + ("object mask empty, undefined" if v != v else
                 f"{100 * v:+.2f} % of the image (salient area change)") for k, v in enumerate(values)]
        return {"ui": {"text": ["\n".join(lines)]}, "result": (values, maps.to(comfy_glue.intermediate_device()))}


NODE_CLASS_MAPPINGS = {
    "SalientBG_SAMLoader": SAMLoader,
    "SalientBG_SAMRefineMask": SAMRefineMask,
    "SalientBG_ObjectExpansionScore": ObjectExpansionScore,
    "SalientBG_SignedSalientAreaChange": SignedSalientAreaChange,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SalientBG_SAMLoader": "Load SAM (Segment Anything)",
    "SalientBG_SAMRefineMask": "SAM refine mask",
    "SalientBG_ObjectExpansionScore": "Object expansion score (SAM)",
    "SalientBG_SignedSalientAreaChange": "Signed salient area change (reference notebook)",
}
