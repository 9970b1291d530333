"""Which model, which base -- worked out once: the ModelPlan, the base table's ComfyUI families, the errors that fit
the file in hand, and the layering (models/bases.py on the ground floor, no import circle)."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil

import pytest
import torch

from salient_background.models import bases
from salient_background.models.bases import BASES, base_mismatch_message, get_base, how_to_get_controlnet
from salient_background.models.errors import CheckpointError, InputError
from salient_background.models.generation import model_plan
from salient_background.models.generation.model_plan import ModelPlan, plan_models
from sb_testkit.bases import tiny_base_folder

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD15, SD2, SDXL = get_base("sd15-inpainting"), get_base("sd2-inpainting"), get_base("sdxl-inpainting")
SD2_DOWNLOAD = "download controlnet"  # the paper's SD2 ControlNet's download command
SD2_ADDRESS = "huggingface.co/yahoo-inc/photo-background-generation"


def _no_weights(monkeypatch):
    """Every weight reader fails: what runs under this reads configs and headers only."""
    import safetensors.torch

    def forbidden(*a, **k):
        raise AssertionError("weights read")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def _controlnet_recorded_as(src: str, dst: str, base: str) -> str:
    """A copy of a ControlNet folder whose config records ``base`` (as our export does)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    config = json.load(open(path))
    config["salient_base"] = base
    json.dump(config, open(path, "w"))
    return dst


# ---------------------------------------------------------------------------------------------- the plan
def test_the_plan_of_each_form_of_model(tiny_sd, tmp_path, monkeypatch):
    from sb_testkit.sd_single_file import comfyui_models_dir

    models = comfyui_models_dir(tiny_sd, str(tmp_path / "models"))
    _no_weights(monkeypatch)
    plan = plan_models(tiny_sd.hf_pipeline_dir)
    assert (plan.base, plan.model_path, plan.single_file, plan.config_dir, plan.pipeline_folder) == (
        SD2, tiny_sd.hf_pipeline_dir, False, tiny_sd.hf_pipeline_dir, tiny_sd.hf_pipeline_dir)
    assert plan.controlnet_path == os.path.join(tiny_sd.hf_pipeline_dir, "controlnet") and plan.controlnet_base is SD2
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.base = SD15
    single = os.path.join(models, "checkpoints", "512-inpainting-ema.safetensors")
    plan = plan_models(base_model_path=single, controlnet_path=tiny_sd.controlnet_safetensors)
    assert plan.single_file and plan.base is SD2 and plan.pipeline_folder is None
    assert plan.config_dir == os.path.join(models, "diffusers", "stable-diffusion-2-inpainting")
    assert plan.controlnet_path == tiny_sd.controlnet_safetensors and plan.uses_controlnet
    baseline = plan_models(base_model_path=tiny_sd.si2_dir, use_controlnet=False)
    assert baseline.controlnet_path is None and not baseline.uses_controlnet and baseline.controlnet_base is None
    sdxl = tiny_base_folder("sdxl-inpainting")
    assert plan_models(base_model_path=sdxl, use_controlnet=False).base is SDXL


def test_every_check_that_needs_no_weights_is_made_by_the_plan(tiny_sd, tmp_path, monkeypatch):
    other_base = _controlnet_recorded_as(tiny_sd.controlnet_dir, str(tmp_path / "cn15"), "sd15-inpainting")
    _no_weights(monkeypatch)
    with pytest.raises(InputError, match="not both"):
        plan_models(tiny_sd.hf_pipeline_dir, base_model_path=tiny_sd.si2_dir)
    with pytest.raises(InputError, match="no model given"):
        plan_models()
    with pytest.raises(CheckpointError, match="SD2-inpainting model not found"):
        plan_models(base_model_path=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="has no 'controlnet/' folder"):
        plan_models(tiny_sd.si2_dir)
    with pytest.raises(InputError, match="no ControlNet given"):
        plan_models(base_model_path=tiny_sd.si2_dir)
    with pytest.raises(CheckpointError, match="salient ControlNet not found"):
        plan_models(base_model_path=tiny_sd.si2_dir, controlnet_path=str(tmp_path / "gone.safetensors"))
    with pytest.raises(InputError) as err:
        plan_models(base_model_path=tiny_sd.si2_dir, controlnet_path=other_base)
    text = str(err.value)
    assert text.startswith(f"the ControlNet {other_base!r} is for Stable Diffusion 1.5 inpainting, but the base model "
                           "is Stable Diffusion 2 inpainting: ")
    assert SD2_DOWNLOAD in text  # an SD2 ControlNet is what this model needs, and one is published


def test_one_base_decision_per_load(tiny_sd, monkeypatch):
    from salient_background.models.generation import loading

    calls = []
    real = model_plan.base_of_model
    monkeypatch.setattr(model_plan, "base_of_model", lambda path: calls.append(path) or real(path))
    pipe = loading.load_pipeline(base_model_path=tiny_sd.si2_dir, controlnet_path=tiny_sd.controlnet_dir)
    assert calls == [tiny_sd.si2_dir] and pipe.controlnet is not None


def test_the_loaders_take_the_plan(tiny_sd):
    from salient_background.models.generation.loading import load_components, pipeline_from_plan

    plan = plan_models(base_model_path=tiny_sd.si2_dir, controlnet_path=tiny_sd.controlnet_dir)
    pipe = pipeline_from_plan(plan)
    unet = load_components(plan)[3]
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet.state_dict().items())
    assert pipe.controlnet.config.cross_attention_dim == unet.config.cross_attention_dim


# ---------------------------------------------------------------------------------------------- wrong-base errors
def test_the_advice_for_a_controlnet_fits_the_base_wanted():
    assert SD2_DOWNLOAD in how_to_get_controlnet(SD2)
    for base in (SD15, SDXL):
        text = how_to_get_controlnet(base)
        assert f"training train --base {base.name}" in text and "not published" in text
        assert SD2_DOWNLOAD not in text and SD2_ADDRESS not in text
    text = base_mismatch_message(SD2, SDXL)
    assert text.startswith("the ControlNet is for Stable Diffusion 2 inpainting, but the base model is Stable "
                           "Diffusion XL inpainting: ")
    assert "training train --base sdxl-inpainting" in text and SD2_DOWNLOAD not in text and SD2_ADDRESS not in text


def test_the_reader_api_tells_an_sd2_file_asked_for_as_sd15_how_to_get_an_sd15_one(tiny_sd, tmp_path):
    from salient_background.models.networks.controlnet_checkpoint import load_controlnet_state_dict

    sd2 = _controlnet_recorded_as(tiny_sd.controlnet_dir, str(tmp_path / "cn2"), "sd2-inpainting")
    with pytest.raises(CheckpointError) as err:
        load_controlnet_state_dict(sd2, base="sd15-inpainting")
    text = str(err.value)
    assert "it is for Stable Diffusion 2 inpainting (sd2-inpainting), not Stable Diffusion 1.5 inpainting" in text
    assert "training train --base sd15-inpainting" in text and SD2_DOWNLOAD not in text and SD2_ADDRESS not in text
    # asked for as SD2, a file of SD1.5 is pointed to the published SD2 one
    sd15 = _controlnet_recorded_as(tiny_sd.controlnet_dir, str(tmp_path / "cn15"), "sd15-inpainting")
    with pytest.raises(CheckpointError) as err:
        load_controlnet_state_dict(sd15, base="sd2-inpainting", cross_attention_dim=None)
    assert SD2_DOWNLOAD in str(err.value)


def test_a_node_tells_an_sd2_controlnet_on_sdxl_how_to_get_an_sdxl_one():
    from salient_background.nodes.controlnet_nodes import BaseMismatchError, check_same_base

    with pytest.raises(BaseMismatchError) as err:
        check_same_base(SD2, SDXL, SDXL.title)
    text = str(err.value)
    assert text.startswith("this salient ControlNet is for Stable Diffusion 2 inpainting, but the sampled model is "
                           "Stable Diffusion XL inpainting: load ")
    assert "training train --base sdxl-inpainting" in text and SD2_DOWNLOAD not in text and SD2_ADDRESS not in text


def test_a_missing_controlnet_in_comfyui_says_sd15_and_sdxl_ones_can_only_be_trained(tmp_path, monkeypatch):
    """Issue 18, 7c: the SD1.5/SDXL workflows name a ControlNet folder of their own; when it is not there the node
    says it can only be trained, with the command (and the SD2 download only as the SD2 one's)."""
    from salient_background.nodes import comfy_glue, controlnet_nodes

    monkeypatch.setattr(comfy_glue, "model_folder_paths", lambda folder: [str(tmp_path)])
    reason = controlnet_nodes.LoadSalientControlNet.VALIDATE_INPUTS("salient_controlnet_sd15")
    assert isinstance(reason, str) and "salient_controlnet_sd15" in reason
    assert "Stable Diffusion 1.5 inpainting or Stable Diffusion XL inpainting is not published: it can only be trained" \
        in reason
    assert "training train --base <sd15-inpainting|sdxl-inpainting>" in reason and "training export" in reason
    assert reason.index("can only be trained") < reason.index(SD2_DOWNLOAD)


def test_the_loader_node_shows_and_outputs_the_base_it_read(monkeypatch):
    from salient_background.nodes import controlnet_nodes
    from salient_background.nodes.controlnet_nodes import LoadSalientControlNet, make_inpaint_control_model

    class Loaded:  # stands in for the ComfyUI ControlNet load_salient_controlnet returns
        control_model = make_inpaint_control_model(torch.nn.Identity(), base=SD15)

    monkeypatch.setattr(LoadSalientControlNet, "resolve", staticmethod(lambda name: name))
    monkeypatch.setattr(controlnet_nodes, "load_salient_controlnet", lambda path: Loaded)
    out = LoadSalientControlNet().load("mine_sd15")
    control_net, base_text = out["result"]
    assert control_net is Loaded and out["ui"]["text"] == [base_text]
    assert len(out["result"]) == len(LoadSalientControlNet.RETURN_TYPES) == len(LoadSalientControlNet.RETURN_NAMES)
    assert LoadSalientControlNet.RETURN_TYPES[1] == "STRING"
    assert "Stable Diffusion 1.5 inpainting (sd15-inpainting)" in base_text and "512 px" in base_text
    unknown = controlnet_nodes.describe_controlnet_base(None, 32)
    assert "no known base" in unknown and "32-wide" in unknown


# ---------------------------------------------------------------------------------------------- ComfyUI's families
def _controlnet_config(unet_config: dict) -> dict:
    """The config of the ControlNet the trainer creates (``from_unet``) from a full-size UNet config, weightless."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, load_weights_from_unet=False)
    return dict(controlnet.config), dict(unet.config)


def _sdxl_family_unet(depths, mid_block_type="UNetMidBlock2DCrossAttn") -> dict:
    from salient_background.models.generation.base_configs import full_size_configs

    config = full_size_configs("sdxl-inpainting")["unet"]
    config.update(transformer_layers_per_block=list(depths), mid_block_type=mid_block_type)
    return config


def test_a_segmind_vega_shaped_controlnet_is_one_comfyui_builds():
    """Segmind-Vega: SDXL's widths and conditioning, transformer depths 0/1/2 per level, no attention in the middle
    block (ComfyUI 0.3.64 detects it as Segmind_Vega; cldm builds a middle block without a transformer)."""
    from salient_background.models.networks.comfy_constraints import comfy_buildable_problems, comfy_family
    from salient_background.training.base_models import check_comfy_buildable
    from salient_background.training.export import verify_comfy_buildable

    config, unet_config = _controlnet_config(_sdxl_family_unet((1, 1, 2), "UNetMidBlock2D"))
    assert config["mid_block_type"] == "UNetMidBlock2D"
    assert comfy_family(unet_config) == comfy_family(config) == "Segmind_Vega"
    assert comfy_buildable_problems(config) == []
    check_comfy_buildable(config, unet_config)  # the trainer accepts it
    verify_comfy_buildable(config, "vega-export")  # and so does the export
    ssd1b, _ = _controlnet_config(_sdxl_family_unet((1, 2, 4)))
    assert comfy_family(ssd1b) == "SSD1B" and comfy_buildable_problems(ssd1b) == []
    family = next(f for f in bases.COMFY_FAMILIES if f.name == "Segmind_Vega")
    assert family.base == "sdxl-inpainting" and BASES[family.base].comfy_model == "SDXL"


def test_a_shape_comfyui_cannot_detect_is_refused(caplog):
    """SDXL's widths with depths 0/2/6 on two resnets per level: no family of ComfyUI's (KOALA-1B has 0/2/6 on one)."""
    from salient_background.models.networks.comfy_constraints import comfy_buildable_problems, comfy_family
    from salient_background.training.base_models import check_comfy_buildable

    config, unet_config = _controlnet_config(_sdxl_family_unet((1, 2, 6)))
    assert comfy_family(config) is None
    problems = comfy_buildable_problems(config)
    assert len(problems) == 1 and "ComfyUI recognises no model family" in problems[0]
    assert "Segmind_Vega" in problems[0] and "SSD1B" in problems[0]  # the families it knows, from the one table
    # a Vega-shaped ControlNet whose heads differ from the family's: refused by the trainer
    vega, vega_unet = _controlnet_config(_sdxl_family_unet((1, 1, 2), "UNetMidBlock2D"))
    with pytest.raises(InputError, match="attention heads differ"):
        check_comfy_buildable({**vega, "attention_head_dim": [5, 10, 10]}, vega_unet)
    # a middle block ComfyUI has no builder for
    assert any("mid_block_type" in p for p in comfy_buildable_problems({**vega, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}))


# ---------------------------------------------------------------------------------------------- the layering
def _module_imports(path: str, package: str) -> set[str]:
    """The pack's modules a module imports at import time (top-level ``import``/``from`` statements only)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
    return found


def _package_graph() -> dict[str, set[str]]:
    modules = {}
    for folder in ("models", "nodes", "training", "commands"):
        for root, _, files in os.walk(os.path.join(PACKAGE, folder)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, name), PACKAGE)[:-3].replace(os.sep, ".")
                    modules[rel.removesuffix(".__init__")] = os.path.join(root, name)
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        graph[module] = {m for m in _module_imports(path, package) if m in modules and m != module}
    return graph


def test_no_import_circle_and_the_bases_on_the_ground_floor():
    graph = _package_graph()
    state: dict[str, int] = {}

    def visit(module, trail):
        state[module] = 1
        for nxt in graph[module]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])
    assert graph["models.bases"] <= {"models.errors"}
    assert "models.generation.pipeline_xl" not in graph["models.generation.pipeline"]
    for module in ("models.networks.controlnet_checkpoint", "models.networks.comfy_constraints", "nodes.controlnet_nodes",
                   "training.base_models"):
        assert not any(m.startswith("models.generation.bases") for m in graph[module])
    assert not os.path.exists(os.path.join(PACKAGE, "models", "pipeline.py"))
    assert not os.path.exists(os.path.join(PACKAGE, "models", "controlnet_checkpoint.py"))


def test_the_framing_node_has_a_base_neutral_name_and_its_first_id():
    from salient_background.nodes import controlnet_nodes

    assert controlnet_nodes.NODE_DISPLAY_NAME_MAPPINGS["SalientBG_FrameForSD2"] == "Frame for Inpainting Model"
    assert controlnet_nodes.NODE_CLASS_MAPPINGS["SalientBG_FrameForSD2"] is controlnet_nodes.FrameForInpainting


def test_a_plan_is_a_plain_value():
    plan = ModelPlan(base=SD2, model_path="m", single_file=False, config_dir="m")
    assert plan == dataclasses.replace(plan) and hash(plan) == hash(dataclasses.replace(plan))
