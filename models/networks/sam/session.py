"""One image, one embedding, many prompts: a thin layer over ``segment_anything.SamPredictor``.

Meta's predictor does the official pre-processing (uint8 RGB, PIL resize of the long side to 1024, pixel
normalisation, zero padding) and the prompt coordinate transform; this module adds the rule that chooses one of
SAM's outputs and returns torch masks at the input resolution.

Mask choice (``mask_choice``):

* ``auto`` (default): a prompt made of a single point (no box) is ambiguous, so SAM's three multimask outputs are
  computed and the one with the highest predicted IoU is kept; any larger prompt (several points and/or a box)
  uses SAM's single-output token, which SAM was trained to use for unambiguous multi-prompt input.
* ``best_score``: always the three multimask outputs, highest predicted IoU.
* ``largest``: always the three multimask outputs, the one with the most pixels (ties: highest IoU).
* ``single``: always the single-output token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...imaging.image_ops import image_to_uint8
from .prompts import PromptSet

MASK_CHOICES = ("auto", "best_score", "largest", "single")


@dataclass
class SamPrediction:
    mask: torch.Tensor  # bool [H,W] at the image's resolution
    score: float  # SAM's predicted IoU of the kept mask
    index: int  # which output was kept (0 = single token, 1..3 = multimask outputs; see SamPredictor)
    multimask: bool


def uses_multimask(prompt: PromptSet, mask_choice: str) -> bool:
    if mask_choice not in MASK_CHOICES:
        raise ValueError(f"mask_choice must be one of {MASK_CHOICES}, got {mask_choice!r}")
    if mask_choice == "auto":
        return prompt.num_prompts <= 1
    return mask_choice in ("best_score", "largest")


def choose_output(masks: np.ndarray, scores: np.ndarray, mask_choice: str) -> int:
    """Index of the kept output among ``masks`` [C,H,W] bool with predicted IoUs ``scores`` [C]."""
    if len(scores) == 1:
        return 0
    if mask_choice == "largest":
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        order = sorted(range(len(scores)), key=lambda i: (-int(areas[i]), -float(scores[i]), i))
        return order[0]
    return int(np.argmax(scores))


class SamImageSession:
    """Computes the image embedding once (in ``__init__``) and answers any number of prompts on that image."""

    def __init__(self, model: torch.nn.Module, image: torch.Tensor | np.ndarray):
        from segment_anything import SamPredictor

        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"expected one RGB image [H,W,3], got shape {tuple(image.shape)}")
            image = image_to_uint8(image)
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8:
            raise ValueError("numpy images must be uint8 RGB [H,W,3]")
        self.height, self.width = int(image.shape[0]), int(image.shape[1])
        self.predictor = SamPredictor(model)
        self.predictor.set_image(image, image_format="RGB")

    def predict(self, prompt: PromptSet, mask_choice: str = "auto") -> SamPrediction:
        if len(prompt.points) == 0 and prompt.box is None:
            raise ValueError("an empty prompt: give at least one point or a box")
        multimask = uses_multimask(prompt, mask_choice)
        masks, scores, _ = self.predictor.predict(
            point_coords=prompt.points if len(prompt.points) else None,
            point_labels=prompt.labels if len(prompt.points) else None,
            box=prompt.box,
            multimask_output=multimask,
        )
        idx = choose_output(masks, scores, mask_choice)
        return SamPrediction(
            mask=torch.from_numpy(np.ascontiguousarray(masks[idx])).bool(),
            score=float(scores[idx]),
            index=(idx + 1) if multimask else 0,
            multimask=multimask,
        )

    def close(self) -> None:
        self.predictor.reset_image()
