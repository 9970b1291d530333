"""The per-step inputs (polarity, hint range, masked image) and the conditioning node, on hand-made inputs.

The node's two ComfyUI calls (conditioning_set_values, the stock Apply ControlNet (Advanced)) are replaced by
recorders here; the real ones run in tests/integration/test_controlnet_comfyui.py.
"""
from __future__ import annotations

import pytest
import torch

from salient_background.models.errors import InputError
from salient_background.models.bases import get_base
from salient_background.models.generation.inpaint_inputs import build_inpaint_inputs, latent_mask
from salient_background.nodes import comfy_glue, controlnet_nodes
from salient_background.nodes.controlnet_nodes import (
    BaseMismatchError,
    NotAnInpaintingModelError,
    SalientControlNetConditioning,
    make_inpaint_control_model,
)


def test_polarities_ranges_and_masked_image_on_a_hand_made_example():
    # 2x4 image: left half object (mask 1 / 0.9), right half background (0 / 0.2 / 0.6 soft values)
    image = torch.tensor([[[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.8, 0.8, 0.8]],
                          [[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [0.4, 0.4, 0.4], [0.6, 0.6, 0.6]]])[None]
    mask = torch.tensor([[1.0, 0.9, 0.0, 0.2], [1.0, 0.6, 0.4, 0.0]])
    inp = build_inpaint_inputs(image, mask)
    # repaint mask: 1 - mask binarised at 0.5 -> 1 on background, 0 on the object
    assert inp.repaint_mask.shape == (1, 1, 2, 4)
    assert inp.repaint_mask[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    # hint: soft inverted mask, [0,1], 3 identical channels, not normalised
    assert inp.hint.shape == (1, 3, 2, 4)
    expected_hint = 1 - mask
    for c in range(3):
        assert torch.allclose(inp.hint[0, c], expected_hint)
    assert inp.hint.min() >= 0 and inp.hint.max() <= 1
    # masked image: object pixels kept in [-1,1], background exactly 0
    mi = inp.masked_image[0]
    assert mi.shape == (3, 2, 4)
    assert torch.allclose(mi[:, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(mi[:, 1, 1], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(mi[:, :, 2:] == 0)
    # as a ComfyUI IMAGE the background is mid grey
    bhwc = inp.masked_image_bhwc01()
    assert bhwc.shape == (1, 2, 4, 3) and torch.all(bhwc[0, :, 2:] == 0.5)
    assert torch.allclose(bhwc[0, 0, 0], image[0, 0, 0])


def test_binarisation_matches_the_reference_at_the_threshold():
    # the reference inverts an 8-bit mask (255 - v) and sets >= 0.5 to 1: v <= 127 repaints, v >= 128 keeps
    v = torch.arange(256, dtype=torch.float32)
    inp = build_inpaint_inputs(torch.zeros(1, 1, 256, 3), (v / 255.0)[None])
    ref = ((255 - v) / 255.0 >= 0.5).float()
    assert torch.equal(inp.repaint_mask[0, 0, 0], ref)


def test_batches_broadcast_and_layouts():
    images = torch.rand(3, 16, 24, 3)
    mask = torch.zeros(16, 24)
    mask[4:12, 6:18] = 1
    inp = build_inpaint_inputs(images, mask)
    assert inp.repaint_mask.shape == (3, 1, 16, 24) and inp.hint.shape == (3, 3, 16, 24)
    same = build_inpaint_inputs(images.permute(0, 3, 1, 2), mask[None, None], layout="BCHW")
    assert torch.equal(same.masked_image, inp.masked_image)
    one_image = build_inpaint_inputs(images[:1], torch.stack([mask, 1 - mask]))
    assert one_image.masked_image.shape[0] == 2
    with pytest.raises(InputError, match="batch"):
        build_inpaint_inputs(images, torch.zeros(2, 16, 24))
    with pytest.raises(InputError, match="16x24"):
        build_inpaint_inputs(images, torch.zeros(1, 16, 20))


def test_latent_mask_is_nearest_downsampling():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 3:9, 0:16] = 1  # rows 3..8
    lm = latent_mask(m, 2, 2)
    # nearest picks pixel rows 0 and 8 -> [0, 1]
    assert lm[0, 0, :, 0].tolist() == [0.0, 1.0]


# ---------------------------------------------------------------------------------------------- the control model
class FakeControlNet(torch.nn.Module):
    """Stands in for comfy.cldm.cldm.ControlNet: records what its forward receives."""

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        return {"x": x, "kwargs": kwargs}


def test_control_model_appends_c_concat_after_x():
    model = make_inpaint_control_model(FakeControlNet(), in_channels=9, context_dim=1024)
    x = torch.randn(2, 4, 8, 8)
    c = torch.randn(2, 5, 8, 8)
    out = model(x=x, hint=None, timesteps=None, context=torch.zeros(2, 77, 1024), y=None, c_concat=c)
    assert torch.equal(out["x"], torch.cat([x, c], dim=1)) and out["kwargs"] == {}
    assert isinstance(model, FakeControlNet)  # same object, same weights: only forward changed


def test_control_model_errors_name_the_inpainting_model():
    model = make_inpaint_control_model(FakeControlNet(), in_channels=9, base=get_base("sd2-inpainting"))
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(NotAnInpaintingModelError, match="512-inpainting-ema") as err:
        model(x=x, hint=None, timesteps=None, context=torch.zeros(1, 77, 1024), c_concat=None)
    assert "not a 9-channel inpainting model" in str(err.value)
    with pytest.raises(NotAnInpaintingModelError, match="4 latent \\+ 1 inpainting channels"):
        model(x=x, hint=None, timesteps=None, context=torch.zeros(1, 77, 1024), c_concat=torch.zeros(1, 1, 8, 8))
    with pytest.raises(BaseMismatchError, match="is for Stable Diffusion 2 inpainting, but .* Stable Diffusion 1.5"):
        model(x=x, hint=None, timesteps=None, context=torch.zeros(1, 77, 768), c_concat=torch.zeros(1, 5, 8, 8))
    # a ControlNet of unknown base (tests' tiny models) still checks the width it was given
    tiny = make_inpaint_control_model(FakeControlNet(), in_channels=9, context_dim=32)
    with pytest.raises(BaseMismatchError, match="768 wide but the salient ControlNet needs 32"):
        tiny(x=x, hint=None, timesteps=None, context=torch.zeros(1, 77, 768), c_concat=torch.zeros(1, 5, 8, 8))


# ---------------------------------------------------------------------------------------------- the node
class FakeVAE:
    """'Encodes' by 8x8 average pooling of the first 3 channels plus a constant 4th: easy to predict."""

    downscale_ratio = 8

    def __init__(self):
        self.calls = []

    def encode(self, pixels):
        self.calls.append(pixels.clone())
        x = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


class FakeSalientControlNet:
    control_model = make_inpaint_control_model(FakeControlNet(), base=get_base("sd2-inpainting"))


@pytest.fixture
def recorded(monkeypatch):
    calls = {}

    def set_values(conditioning, values):
        calls.setdefault("set_values", []).append(values)
        return [[t[0], {**t[1], **values}] for t in conditioning]

    def apply_adv(positive, negative, control_net, hint_image, strength, start, end, vae=None):
        calls["apply"] = dict(control_net=control_net, hint=hint_image, strength=strength, start=start, end=end, vae=vae)
        return ([[t[0], {**t[1], "control": "cn"}] for t in positive], [[t[0], {**t[1], "control": "cn"}] for t in negative])

    monkeypatch.setattr(comfy_glue, "conditioning_set_values", set_values)
    monkeypatch.setattr(comfy_glue, "apply_controlnet_advanced", apply_adv)
    return calls


def test_conditioning_node_builds_what_the_reference_builds(recorded):
    images = torch.rand(2, 32, 48, 3)
    mask = torch.zeros(1, 32, 48)
    mask[:, 8:24, 16:40] = 0.8  # soft object
    mask[:, 0:8, 0:8] = 0.3  # soft, below the threshold: background
    vae = FakeVAE()
    pos = [[torch.zeros(1, 77, 1024), {}]]
    neg = [[torch.zeros(1, 77, 1024), {}]]
    p, n, latent = SalientControlNetConditioning().apply(pos, neg, FakeSalientControlNet(), vae, images, mask, 0.7, 0.1, 0.9)
    # two encodes: masked image (background mid grey, object kept) and the photo itself
    masked, photo = vae.calls
    obj = (mask[0] >= 0.5)
    assert torch.all(masked[:, ~obj] == 0.5)
    assert torch.equal(masked[:, obj], images[:, obj])
    assert torch.equal(photo, images)
    assert torch.equal(latent["samples"], vae.encode(images)) and "noise_mask" not in latent
    # concat on both conds: masked-image latent + the inverted binarised mask at latent size (nearest)
    values = recorded["set_values"][0]
    assert recorded["set_values"][1] is values or recorded["set_values"][1] == values
    cm = values["concat_mask"]
    assert cm.shape == (2, 1, 4, 6)
    expected = (1 - (mask[0, ::8, ::8] >= 0.5).float())
    assert torch.equal(cm[0, 0], expected) and torch.equal(cm[1, 0], expected)
    assert values["concat_latent_image"].shape == (2, 4, 4, 6)
    # the hint: soft inverted mask, 3 channels, [0,1], full pixel size, ComfyUI IMAGE layout
    a = recorded["apply"]
    assert a["hint"].shape == (2, 32, 48, 3)
    assert torch.allclose(a["hint"][0, ..., 1], 1 - mask[0]) and a["hint"].min() >= 0 and a["hint"].max() <= 1
    assert (a["strength"], a["start"], a["end"], a["vae"]) == (0.7, 0.1, 0.9, None)
    assert p[0][1]["control"] == "cn" and n[0][1]["control"] == "cn"


def test_conditioning_node_noise_mask_option_and_cropping(recorded):
    images = torch.rand(1, 36, 44, 3)  # not multiples of 8: centre-cropped to 32x40 like ComfyUI's VAE encode
    mask = torch.zeros(1, 36, 44)
    mask[:, 10:20, 10:30] = 1
    vae = FakeVAE()
    _, _, latent = SalientControlNetConditioning().apply([], [], FakeSalientControlNet(), vae, images, mask, noise_mask=True)
    assert vae.calls[1].shape == (1, 32, 40, 3) and torch.equal(vae.calls[1], images[:, 2:34, 2:42])
    nm = latent["noise_mask"]
    assert nm.shape == (1, 1, 32, 40)
    assert torch.equal(nm[0, 0], 1 - mask[0, 2:34, 2:42])  # 1 = regenerate (background), 0 = keep the object


def test_conditioning_node_refuses_a_stock_controlnet_and_mismatched_masks(recorded):
    class Stock:
        control_model = FakeControlNet()

    with pytest.raises(InputError, match="Load Salient ControlNet"):
        SalientControlNetConditioning().apply([], [], Stock(), FakeVAE(), torch.rand(1, 16, 16, 3), torch.zeros(1, 16, 16))
    with pytest.raises(InputError, match="16x8"):
        SalientControlNetConditioning().apply([], [], FakeSalientControlNet(), FakeVAE(), torch.rand(1, 16, 16, 3), torch.zeros(1, 8, 16))


def test_node_module_registers_its_nodes():
    from salient_background.nodes import NODE_CLASS_MAPPINGS

    for node_id in controlnet_nodes.NODE_CLASS_MAPPINGS:
        assert NODE_CLASS_MAPPINGS[node_id] is controlnet_nodes.NODE_CLASS_MAPPINGS[node_id]
        assert node_id in controlnet_nodes.NODE_DISPLAY_NAME_MAPPINGS
