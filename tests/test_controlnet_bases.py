"""The salient ControlNet beyond SD2: SD1.5- and SDXL-inpainting ControlNets in ComfyUI's key layout (pinned from
the real ComfyUI), the base a loaded ControlNet remembers, and the one error for a ControlNet and a sampled model of
different bases (fake ComfyUI objects here; the real ones in tests/integration/test_controlnet_bases_comfyui.py)."""
from __future__ import annotations

import json

import pytest
import torch

from salient_background.models.bases import get_base
from salient_background.models.networks import comfy_keys
from salient_background.nodes import comfy_glue, controlnet_nodes
from salient_background.nodes.controlnet_nodes import (
    BaseMismatchError,
    SalientControlNetConditioning,
    check_sampled_model,
    make_inpaint_control_model,
)
from sb_testkit import controlnet_parity as cp

SD15, SD2, SDXL = get_base("sd15-inpainting"), get_base("sd2-inpainting"), get_base("sdxl-inpainting")


# ---------------------------------------------------------------------------------------------- ComfyUI keys
def _meta_state_dict(config: dict) -> dict:
    from diffusers import ControlNetModel

    with torch.device("meta"):
        return ControlNetModel(**config).state_dict()


@pytest.mark.parametrize("base, detected, n_keys", [("sd15-inpainting", "SD15", 340), ("sdxl-inpainting", "SDXL", 844)])
def test_full_size_conversion_matches_comfyui_key_names_and_shapes_exactly(base, detected, n_keys):
    """Full-size SD1.5 / SDXL ControlNets (meta tensors): our converted names and shapes equal those of the
    cldm.ControlNet ComfyUI builds for the family it detects (pinned by the integration run)."""
    pinned = json.load(open(cp.comfy_keys_path(base)))
    assert pinned["detected_as"] == detected
    config = cp.FULL_SIZE_CONFIGS[base]()
    diffusers_sd = _meta_state_dict(config)
    converted = comfy_keys.convert_diffusers_to_comfy(diffusers_sd)
    assert len(converted) == len(diffusers_sd) == len(pinned["keys"]) == n_keys
    assert {k: list(v.shape) for k, v in converted.items()} == pinned["keys"]
    layout = comfy_keys.ControlNetLayout.from_config(config)
    assert layout == comfy_keys.ControlNetLayout.from_diffusers_keys(diffusers_sd)
    assert sorted(comfy_keys.expected_diffusers_keys(layout)) == sorted(diffusers_sd)
    assert comfy_keys.convert_comfy_to_diffusers(converted).keys() == diffusers_sd.keys()


def test_sdxl_layout_added_embedding_depths_and_first_level_without_attention():
    sd = _meta_state_dict(cp.sdxl_controlnet_config())
    mapping = comfy_keys.diffusers_to_comfy_key_map(sd)
    assert mapping["add_embedding.linear_1.weight"] == "label_emb.0.0.weight"
    assert mapping["add_embedding.linear_2.bias"] == "label_emb.0.2.bias"
    assert tuple(sd["add_embedding.linear_1.weight"].shape) == (1280, 2816)  # y: pooled 1280 + 6 x 256 time ids
    comfy = set(mapping.values())
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.")) for k in comfy)  # level 0: no attention
    assert "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in comfy  # level 1: depth 2
    assert "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight" in comfy  # level 2: depth 10
    assert "middle_block.1.transformer_blocks.9.attn1.to_q.weight" in comfy
    layout = comfy_keys.ControlNetLayout.from_config(cp.sdxl_controlnet_config())
    assert layout.transformer_depth == (0, 2, 10) and layout.mid_transformer_depth == 10 and layout.added_embedding
    vega = comfy_keys.ControlNetLayout.from_config(cp.vega_controlnet_config())
    assert vega.transformer_depth == (0, 1, 2) and vega.mid_transformer_depth == 0
    vega_keys = comfy_keys.convert_diffusers_to_comfy(_meta_state_dict(cp.vega_controlnet_config()))
    assert {k.split(".")[1] for k in vega_keys if k.startswith("middle_block.")} == {"0"}  # one resnet, as ComfyUI's -1


# ---------------------------------------------------------------------------------------------- control model
class FakeControlNet(torch.nn.Module):
    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        return {"x": x, "y": y}


def _control(base):
    return make_inpaint_control_model(FakeControlNet(), in_channels=9, base=base)


def _call(model, width, y=None):
    return model(x=torch.zeros(1, 4, 8, 8), hint=None, timesteps=None, context=torch.zeros(1, 77, width), y=y,
                 c_concat=torch.zeros(1, 5, 8, 8))


def test_sdxl_control_model_receives_y_and_each_base_accepts_its_own_conditioning():
    y = torch.randn(1, 2816)
    assert torch.equal(_call(_control(SDXL), 2048, y)["y"], y)
    assert _call(_control(SD15), 768)["y"] is None
    assert _call(_control(SD2), 1024)["x"].shape[1] == 9


@pytest.mark.parametrize("controlnet_base, width, y, sampled_title", [
    (SD15, 2048, torch.zeros(1, 2816), "Stable Diffusion XL inpainting"),
    (SDXL, 768, None, "Stable Diffusion 1.5 inpainting"),
    (SDXL, 1024, None, "Stable Diffusion 2 inpainting"),
    (SD2, 768, None, "Stable Diffusion 1.5 inpainting"),
])
def test_first_control_call_names_both_bases(controlnet_base, width, y, sampled_title):
    with pytest.raises(BaseMismatchError) as err:
        _call(_control(controlnet_base), width, y)
    text = str(err.value)
    assert f"this salient ControlNet is for {controlnet_base.title}, but" in text and sampled_title in text
    assert controlnet_nodes.INPAINT_CHECKPOINTS[controlnet_base.name] in text  # what to load instead


# ---------------------------------------------------------------------------------------------- sampled model
def _comfy_model(config_class_name: str, **unet_config):
    """A stand-in for ComfyUI's BaseModel: ``model_config`` is named like comfy.supported_models' classes."""
    config = type(config_class_name, (), {})()
    config.unet_config = unet_config
    return type("BaseModel", (), {"model_config": config})()


SD15_MODEL = _comfy_model("SD15", context_dim=768, adm_in_channels=None, in_channels=9)
VEGA_MODEL = _comfy_model("Segmind_Vega", context_dim=2048, adm_in_channels=2816, in_channels=9)


def test_sampled_model_base_from_comfyui_model_config():
    check_sampled_model(_control(SD15), SD15_MODEL)
    check_sampled_model(_control(SDXL), VEGA_MODEL)
    with pytest.raises(BaseMismatchError) as err:
        check_sampled_model(_control(SD15), VEGA_MODEL)
    assert str(err.value).startswith("this salient ControlNet is for Stable Diffusion 1.5 inpainting, but the sampled "
                                     "model is Stable Diffusion XL inpainting (ComfyUI detected Segmind_Vega)")
    unclip = _comfy_model("SD21UNCLIPH", context_dim=1024, adm_in_channels=1536)
    with pytest.raises(BaseMismatchError, match="a model with 1024-wide text conditioning"):
        check_sampled_model(_control(SDXL), unclip)
    check_sampled_model(make_inpaint_control_model(FakeControlNet(), context_dim=32), VEGA_MODEL)  # unknown base


class FakeStockControlNet:
    """Stands in for comfy.controlnet.ControlNet: ``copy`` builds a plain instance, ``pre_run`` records the model."""

    def __init__(self, control_model=None):
        self.control_model = control_model
        self.ran_with = None

    def copy(self):
        c = FakeStockControlNet()
        c.control_model = self.control_model
        return c

    def pre_run(self, model, percent_to_timestep_function):
        self.ran_with = model


def test_wrapper_checks_the_model_before_sampling_and_survives_copies():
    net = FakeStockControlNet(_control(SD15))
    net.__class__ = controlnet_nodes._salient_wrapper_class(FakeStockControlNet)
    copied = net.copy()  # what Apply ControlNet does
    assert type(copied) is type(net) and copied.control_model is net.control_model
    copied.pre_run(SD15_MODEL, None)
    assert copied.ran_with is SD15_MODEL
    with pytest.raises(BaseMismatchError, match="Segmind_Vega"):
        copied.copy().pre_run(VEGA_MODEL, None)


# ---------------------------------------------------------------------------------------------- conditioning node
class FakeVAE:
    downscale_ratio = 8

    def encode(self, pixels):
        return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)


class FakeSalient:
    def __init__(self, base):
        self.control_model = _control(base)


def test_conditioning_node_reports_prompts_of_another_base_before_encoding(monkeypatch):
    monkeypatch.setattr(comfy_glue, "conditioning_set_values", lambda c, v: c)
    monkeypatch.setattr(comfy_glue, "apply_controlnet_advanced", lambda p, n, *a, **k: (p, n))
    image, mask = torch.rand(1, 16, 16, 3), torch.zeros(1, 16, 16)
    sdxl_prompts = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    sd15_prompts = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
    node = SalientControlNetConditioning()
    with pytest.raises(BaseMismatchError) as err:
        node.apply(sdxl_prompts, sdxl_prompts, FakeSalient(SD15), FakeVAE(), image, mask)
    assert ("this salient ControlNet is for Stable Diffusion 1.5 inpainting, but the prompts' text encoder"
            in str(err.value)) and "is Stable Diffusion XL inpainting" in str(err.value)
    node.apply(sdxl_prompts, sdxl_prompts, FakeSalient(SDXL), FakeVAE(), image, mask)
    node.apply(sd15_prompts, sd15_prompts, FakeSalient(SD15), FakeVAE(), image, mask)


# ---------------------------------------------------------------------------------------------- the loader
def _tiny_config(base: str) -> dict:
    """Tiny ControlNets at a real base's context width (what the base is read from)."""
    cfg = dict(in_channels=9, conditioning_channels=3, block_out_channels=[32, 64], layers_per_block=1,
               norm_num_groups=8, attention_head_dim=[2, 4], conditioning_embedding_out_channels=[8, 16],
               down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], use_linear_projection=base != "sd15-inpainting",
               cross_attention_dim=get_base(base).context_dim)
    if base == "sdxl-inpainting":
        cfg.update(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], addition_embed_type="text_time",
                   addition_time_embed_dim=8, projection_class_embeddings_input_dim=1280 + 6 * 8,
                   transformer_layers_per_block=[1, 2])
    return cfg


@pytest.mark.parametrize("base", ["sd15-inpainting", "sdxl-inpainting", "sd2-inpainting"])
def test_loader_reads_the_base_and_hands_comfyui_its_layout(base, tmp_path, monkeypatch):
    from diffusers import ControlNetModel

    seen = {}

    class FakeCldm(torch.nn.Module):
        def forward(self, x, hint, timesteps, context, y=None, **kwargs):
            return x

    def load(comfy_sd):
        seen["keys"] = set(comfy_sd)
        return type("Loaded", (), {"control_model": FakeCldm()})()

    monkeypatch.setattr(comfy_glue, "comfy_load_controlnet_state_dict", load)
    monkeypatch.setattr(comfy_glue, "cldm_controlnet_class", lambda: FakeCldm)
    monkeypatch.setattr(comfy_glue, "comfy_controlnet", lambda cm, like, extra_conds: FakeStockControlNet(cm))
    folder = tmp_path / base
    ControlNetModel(**_tiny_config(base)).save_pretrained(folder)
    net = controlnet_nodes.load_salient_controlnet(str(folder))
    assert controlnet_nodes.controlnet_base_of(net) is get_base(base)
    assert controlnet_nodes.is_salient_controlnet(net) and isinstance(net, FakeStockControlNet)
    assert ("label_emb.0.0.weight" in seen["keys"]) == (base == "sdxl-inpainting")
