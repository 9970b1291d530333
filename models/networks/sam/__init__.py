"""Segment Anything (Meta's ``segment-anything`` package): loading official checkpoints, prompting from a mask,
and mask refinement. ComfyUI-free; the nodes in ``nodes/sam_nodes.py`` are thin adapters over this."""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ...imaging.image_ops import as_rgb_images, match_mask_to_images
from .loading import (  # noqa: F401
    OFFICIAL_VARIANTS,
    WHERE_TO_GET,
    LoadedSam,
    SamArchitecture,
    build_sam,
    detect_sam_architecture,
    load_sam,
    official_architecture,
    sam_from_state_dict,
)
from .prompts import (  # noqa: F401
    PromptSet,
    chamfer_distance,
    mask_box,
    prompts_from_mask,
    sample_negative_points,
    sample_positive_points,
)
from .session import MASK_CHOICES, SamImageSession, SamPrediction, choose_output, uses_multimask  # noqa: F401

log = logging.getLogger("salient_background")

REFINE_MODES = ("replace", "intersect", "union")


def combine_masks(object_mask: torch.Tensor, sam_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``replace``: SAM's mask; ``intersect``: min(input, SAM); ``union``: max(input, SAM). The input's soft
    values survive where it decides (intersect keeps its soft edge inside SAM's mask, union outside it)."""
    sam_mask = sam_mask.to(object_mask.dtype)
    if mode == "replace":
        return sam_mask
    if mode == "intersect":
        return torch.minimum(object_mask, sam_mask)
    if mode == "union":
        return torch.maximum(object_mask, sam_mask)
    raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")


def refine_masks(
    model: torch.nn.Module,
    images: torch.Tensor,
    object_masks: torch.Tensor,
    *,
    mode: str = "replace",
    points: int = 8,
    seed: int = 0,
    negative: bool = True,
    box: bool = False,
    mask_choice: str = "auto",
    on_image_done: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Refine each ``object_mask`` with SAM prompted from it (one embedding per image). images [B,H,W,C],
    object_masks [1 or B,H,W] of the images' size -> refined masks [B,H,W] float in 0..1 on the CPU.
    An empty input mask has nothing to prompt with: it is returned unchanged, with a warning."""
    if mode not in REFINE_MODES:
        raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")
    images = as_rgb_images(images, what="image")
    shared = object_masks.ndim == 2 or object_masks.shape[0] == 1  # one mask for the batch: one prompt set
    masks = match_mask_to_images(object_masks, images, what="object_mask").cpu()
    out = torch.empty_like(masks)
    prompt = None
    for i in range(images.shape[0]):
        if prompt is None or not shared:
            prompt = prompts_from_mask(masks[i], points, seed, negative=negative, box=box)
        if int((prompt.labels == 1).sum()) == 0:
            log.warning("SAM refine: object_mask %d of %d is empty; returned unchanged", i + 1, images.shape[0])
            out[i] = masks[i]
        else:
            session = SamImageSession(model, images[i])
            pred = session.predict(prompt, mask_choice)
            out[i] = combine_masks(masks[i], pred.mask, mode)
            session.close()
        if on_image_done is not None:
            on_image_done()
    return out
