"""A NaN in a FLOAT input is refused by name (found by the ComfyUI soak, tests/integration/test_soak_comfyui.py).

ComfyUI validates a FLOAT input only with ``value < min`` and ``value > max``, which NaN passes; an API client (JSON
``NaN``) or an edited workflow file reaches the node with it. Without the check a NaN strength or percent went on
to ComfyUI's ControlNet unchecked, a NaN margin failed with "cannot convert float NaN to integer" (no hint of the
input) and a NaN threshold silently kept the mask soft. Runs without ComfyUI.
"""
from __future__ import annotations

import math

import pytest
import torch

from salient_background.models.errors import InputError
from salient_background.nodes.comfy_glue import refuse_nan
from salient_background.nodes.controlnet_nodes import FrameForInpainting, SalientControlNetConditioning
from salient_background.nodes.mask_nodes import MaskRefine
from sb_testkit.images import object_on_background

NAN = float("nan")


def test_refuse_nan_names_every_nan_input_and_lets_numbers_through():
    refuse_nan(strength=1.0, start_percent=0.0, end_percent=math.inf, steps=3)  # inf is ComfyUI's max check's job
    with pytest.raises(InputError, match=r"^start_percent and end_percent is NaN .*set them to a number"):
        refuse_nan(strength=0.5, start_percent=NAN, end_percent=NAN)


@pytest.mark.parametrize("name", ["strength", "start_percent", "end_percent"])
def test_controlnet_conditioning_refuses_a_nan_before_anything_else(name):
    # the other inputs are not even looked at: the NaN is the first thing reported
    values = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, name: NAN}
    with pytest.raises(InputError, match=rf"^{name} is NaN"):
        SalientControlNetConditioning().apply(None, None, None, None, None, None, **values)


def test_frame_refuses_a_nan_margin():
    image, mask = object_on_background(48, 64, seed=1)
    node = FrameForInpainting()
    framed, framed_mask, _ = node.frame(image[None], "crop around object", 64, False, 0.25, mask[None])
    assert framed.shape == (1, 64, 64, 3) and framed_mask.shape == (1, 64, 64)
    with pytest.raises(InputError, match=r"^margin is NaN"):
        node.frame(image[None], "crop around object", 64, False, NAN, mask[None])


def test_mask_refine_refuses_a_nan_threshold():
    _, mask = object_on_background(32, 32, seed=2)
    (refined,) = MaskRefine().refine(mask[None] * 0.8, threshold=0.5)
    assert torch.equal(refined, (mask[None] * 0.8 >= 0.5).float())
    with pytest.raises(InputError, match=r"^threshold is NaN"):
        MaskRefine().refine(mask[None] * 0.8, threshold=NAN)
