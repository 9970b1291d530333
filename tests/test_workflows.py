"""Every shipped workflow is valid against ComfyUI 0.3.64's core node schemas (tests/data/comfyui/object_info.json)
plus the pack's own, its UI and API twins describe the same graph, the files are what workflows/build_workflows.py
writes, the widget layout follows the frontend's rules, model loaders name their downloads, and the checker itself
catches broken copies. (tests/integration/test_workflows_frontend.py loads the UI files in the real frontend.)"""
from __future__ import annotations

import copy
import importlib.util
import json
import os

import pytest

from sb_testkit import workflow_check

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(REPO_ROOT, "workflows")
UI_FILES = workflow_check.workflow_files(WORKFLOWS)


@pytest.fixture(scope="module")
def schemas():
    return workflow_check.load_schemas(workflow_check.CORE_OBJECT_INFO)


def load(path):
    with open(path) as handle:
        return json.load(handle)


def test_there_are_eight_workflows_each_with_an_api_twin():
    names = [os.path.basename(p) for p in UI_FILES]
    assert len(names) == 8, names
    for name in names:
        assert os.path.isfile(os.path.join(WORKFLOWS, "api", name)), f"no API twin for {name}"


@pytest.mark.parametrize("path", UI_FILES, ids=os.path.basename)
def test_ui_workflow_is_valid_and_matches_its_api_twin(schemas, path):
    ui = load(path)
    assert workflow_check.check_ui_workflow(ui, schemas) == []
    api = load(os.path.join(WORKFLOWS, "api", os.path.basename(path)))
    assert workflow_check.check_api_prompt(api, schemas) == []
    assert workflow_check.ui_to_api(ui, schemas) == api
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert notes and any("models/" in n["widgets_values"][0] for n in notes), "a note must say which models go where"


def test_files_are_what_the_builder_writes(schemas):
    spec = importlib.util.spec_from_file_location("build_workflows", os.path.join(WORKFLOWS, "build_workflows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = module.apply(module.render(schemas), check=True)
    assert stale == [], f"run `python workflows/build_workflows.py`: out of date: {stale}"


# ---------------------------------------------------------------------------------------------- the checker
def _paper(schemas):
    return load(os.path.join(WORKFLOWS, "background_generation_paper.json"))


def _node(ui, node_type):
    return next(n for n in ui["nodes"] if n["type"] == node_type)


def break_unknown_type(ui):
    _node(ui, "VAEDecode")["type"] = "VAEDecodeThatDoesNotExist"


def break_link_type(ui):
    sampler = _node(ui, "KSampler")
    link_id = next(s["link"] for s in sampler["inputs"] if s["name"] == "model")
    clip_link = next(link for link in ui["links"] if link[5] == "CLIP")
    link = next(link for link in ui["links"] if link[0] == link_id)
    link[1], link[2] = clip_link[1], clip_link[2]  # MODEL input fed from a CLIP output


def break_required_input(ui):
    decode = _node(ui, "VAEDecode")
    link_id = next(s["link"] for s in decode["inputs"] if s["name"] == "vae")
    decode["inputs"] = [s for s in decode["inputs"] if s["name"] != "vae"]
    ui["links"] = [link for link in ui["links"] if link[0] != link_id]


def break_widget_range(ui):
    sampler = _node(ui, "KSampler")
    sampler["widgets_values"][2] = 0  # steps (after seed and its control value): min is 1


def break_combo_choice(ui):
    sampler = _node(ui, "KSampler")
    sampler["widgets_values"][4] = "a_sampler_that_does_not_exist"


def break_widget_count(ui):
    _node(ui, "SalientBG_SalientMask")["widgets_values"].pop()


def break_control_value(ui):
    _node(ui, "KSampler")["widgets_values"][1] = "sometimes"


def break_pack_widget(ui):
    cond = _node(ui, "SalientBG_ControlNetConditioning")
    cond["widgets_values"][0] = 99.0  # strength far above its maximum


@pytest.mark.parametrize("breaker", [break_unknown_type, break_link_type, break_required_input, break_widget_range,
                                     break_combo_choice, break_widget_count, break_control_value, break_pack_widget])
def test_checker_rejects_a_broken_copy(schemas, breaker):
    ui = copy.deepcopy(_paper(schemas))
    assert workflow_check.check_ui_workflow(ui, schemas) == []
    breaker(ui)
    assert workflow_check.check_ui_workflow(ui, schemas) != []


def test_checker_rejects_broken_api_prompts_and_twins_that_differ(schemas):
    api = load(os.path.join(WORKFLOWS, "api", "background_generation_paper.json"))
    sampler_id = next(k for k, v in api.items() if v["class_type"] == "KSampler")
    bad = copy.deepcopy(api)
    bad[sampler_id]["inputs"]["cfg"] = 1000.0
    assert any("above the maximum" in e for e in workflow_check.check_api_prompt(bad, schemas))
    bad = copy.deepcopy(api)
    del bad[sampler_id]["inputs"]["model"]
    assert any("required input 'model'" in e for e in workflow_check.check_api_prompt(bad, schemas))
    bad = copy.deepcopy(api)
    bad[sampler_id]["inputs"]["positive"] = [sampler_id, 0]  # LATENT into CONDITIONING
    assert any("expects CONDITIONING" in e for e in workflow_check.check_api_prompt(bad, schemas))
    ui = _paper(schemas)
    changed = copy.deepcopy(api)
    changed[sampler_id]["inputs"]["seed"] = 43
    assert workflow_check.ui_to_api(ui, schemas) != changed


def test_frontend_only_nodes_are_resolved_like_the_frontend(schemas):
    """A PrimitiveNode feeding a widget turned into a socket, through a Reroute, ends up as a plain value."""
    ui = copy.deepcopy(_paper(schemas))
    sampler = _node(ui, "KSampler")
    next_id = ui["last_node_id"] + 1
    link_a, link_b = ui["last_link_id"] + 1, ui["last_link_id"] + 2
    ui["nodes"].append({"id": next_id, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": [link_a], "widget": {"name": "seed"}}],
                        "widgets_values": [1234, "fixed"]})
    ui["nodes"].append({"id": next_id + 1, "type": "Reroute", "mode": 0,
                        "inputs": [{"name": "", "type": "*", "link": link_a}],
                        "outputs": [{"name": "", "type": "INT", "links": [link_b]}]})
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": link_b})
    ui["links"] += [[link_a, next_id, 0, next_id + 1, 0, "INT"], [link_b, next_id + 1, 0, sampler["id"], len(sampler["inputs"]) - 1, "INT"]]
    assert workflow_check.check_ui_workflow(ui, schemas) == []
    api = workflow_check.ui_to_api(ui, schemas)
    assert api[str(sampler["id"])]["inputs"]["seed"] == 1234
    assert str(next_id) not in api and str(next_id + 1) not in api


# ---------------------------------------------------------------------------------------------- the frontend's rules
def _int(**options):
    return ["INT", {"default": 0, "min": 0, "max": 100, **options}]


def _layout(**inputs):
    return workflow_check.widget_layout({"input": {"required": inputs}})


def test_control_widgets_follow_the_frontends_rule():
    """comfyui-frontend-package 1.27 (useIntWidget): control_after_generate ?? name in (seed, noise_seed)."""
    assert _layout(seed=_int()) == [("seed", "value"), ("seed", "control")]
    assert _layout(noise_seed=_int()) == [("noise_seed", "value"), ("noise_seed", "control")]
    assert _layout(seed=_int(control_after_generate=False)) == [("seed", "value")]
    assert _layout(steps=_int()) == [("steps", "value")]
    assert _layout(steps=_int(control_after_generate=True)) == [("steps", "value"), ("steps", "control")]
    assert _layout(seed=["STRING", {}]) == [("seed", "value")]  # the name rule is for INT widgets only
    assert _layout(seed=["INT", {"forceInput": True}]) == []  # a socket, no widget
    # a combo with control_after_generate gets the control and a filter-list widget
    assert _layout(pick=[["a", "b"], {"control_after_generate": True}]) == [
        ("pick", "value"), ("pick", "control"), ("pick", "filter")]


def test_core_samplers_and_an_unflagged_core_seed(schemas):
    assert ("seed", "control") in workflow_check.widget_layout(schemas["KSampler"])
    unflagged = copy.deepcopy(schemas["KSampler"])  # e.g. core TrainLoraNode's seed has no flag
    del unflagged["input"]["required"]["seed"][1]["control_after_generate"]
    assert ("seed", "control") in workflow_check.widget_layout(unflagged)


def test_pack_seed_inputs_have_no_control_widget(schemas):
    """A seed that re-randomised on every queue would change the SAM points, so the score, run to run: the pack's
    seed inputs say control_after_generate False, explicitly, since the frontend adds one to any INT called seed."""
    seeds = 0
    for node_type, schema in schemas.items():
        if not node_type.startswith("SalientBG_"):
            continue
        for name, spec, _ in workflow_check._input_specs(schema):
            if name in workflow_check.LEGACY_SEED_NAMES and workflow_check._kind(spec) == "INT":
                seeds += 1
                assert workflow_check._options(spec).get("control_after_generate") is False, (node_type, name)
                assert (name, "control") not in workflow_check.widget_layout(schema)
    assert seeds >= 2  # SAM Refine Mask and Object Expansion Score


def test_a_seed_without_the_flag_would_shift_the_sam_widgets(schemas):
    """The bug the flag fixes: without it the frontend inserts a control widget after seed, so in the saved product
    workflow 'box' would receive 'auto' and 'mask_choice' nothing. The checker sees it."""
    ui = load(os.path.join(WORKFLOWS, "product_shots_sam_crop_pasteback.json"))
    unflagged = copy.deepcopy(schemas)
    del unflagged["SalientBG_SAMRefineMask"]["input"]["required"]["seed"][1]["control_after_generate"]
    errors = workflow_check.check_ui_workflow(ui, unflagged)
    assert any("SalientBG_SAMRefineMask" in e and "widget values" in e for e in errors), errors


# ---------------------------------------------------------------------------------------------- model downloads
def test_every_model_loader_offers_its_download():
    """The frontend (properties.models: {name, url, directory}) lists an entry whose name equals a widget value of
    the node as a model to download into that model folder when the file is missing."""
    from salient_background.models.model_files import model_registry

    spec = importlib.util.spec_from_file_location("build_workflows", os.path.join(WORKFLOWS, "build_workflows.py"))
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    loaders = 0
    for path in UI_FILES:
        for node in load(path)["nodes"]:
            models = node.get("properties", {}).get("models")
            if node["type"] not in builder.MODEL_WIDGETS:
                assert models is None, (path, node["type"])
                continue
            loaders += 1
            names = {v for v in node["widgets_values"] if isinstance(v, str)}
            if names & builder.UNREGISTERED_MODELS:  # SDXL inpainting: the note says what to load
                assert models is None, (path, node["type"])
                continue
            assert models, f"{os.path.basename(path)}: {node['type']} has no properties.models"
            matching = [m for m in models if m["name"] in names]
            assert matching, (path, node["type"], models)
            for entry in matching:
                assert set(entry) == {"name", "url", "directory"}
                row = next(r for r in model_registry.MODEL_FILES if r.filename == entry["name"])
                assert entry["url"] == row.urls[0] and entry["url"].startswith("https://")
                assert entry["directory"] == row.folder
    assert loaders >= 14


# ---------------------------------------------------------------------------------------------- the schemas file
def test_core_schemas_are_the_trimmed_comfyui_answer():
    """tests/data/comfyui/object_info.json holds exactly the core node types the workflows use, as
    regenerate_object_info.py trims them (so a regeneration from a running ComfyUI reproduces it)."""
    path = os.path.join(REPO_ROOT, "tests", "data", "comfyui", "regenerate_object_info.py")
    spec = importlib.util.spec_from_file_location("regenerate_object_info", path)
    regen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regen)
    committed = load(workflow_check.CORE_OBJECT_INFO)
    assert set(committed) == regen.wanted_node_types()
    assert regen.trim(committed, regen.wanted_node_types()) == committed
    assert committed["KSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True


def test_nothing_reads_outside_the_repository():
    outside, shared_copy = "/".join(["..", "shared"]), "/".join(["shared", "comfyui"])
    for folder in ("workflows", "tests"):
        for root, dirs, files in os.walk(os.path.join(REPO_ROOT, folder)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".pytest_cache")]
            for name in files:
                if name.endswith((".py", ".md", ".json", ".yaml", ".txt")):
                    with open(os.path.join(root, name), errors="replace") as handle:
                        text = handle.read()
                    assert outside not in text and shared_copy not in text, os.path.join(root, name)


# ---------------------------------------------------------------------------------------------- other bases
@pytest.mark.parametrize("variant, checkpoint, controlnet, size, base", [
    ("sd15", "sd-v1-5-inpainting.ckpt", "salient_controlnet_sd15", 512, "sd15-inpainting"),
    ("sdxl", "sd_xl_1.0_inpainting_0.1.safetensors", "salient_controlnet_sdxl", 1024, "sdxl-inpainting"),
])
def test_base_variants_of_the_paper_workflow(variant, checkpoint, controlnet, size, base):
    """Same graph as the paper's, with the base's checkpoint, our ControlNet export's folder name, the base's canvas,
    and a note saying a ControlNet trained for that base is needed and how to make one."""
    api = load(os.path.join(WORKFLOWS, "api", f"background_generation_paper_{variant}.json"))
    sd2 = load(os.path.join(WORKFLOWS, "api", "background_generation_paper.json"))
    assert sorted(n["class_type"] for n in api.values()) == sorted(n["class_type"] for n in sd2.values())
    by_type = {n["class_type"]: n["inputs"] for n in api.values()}
    assert by_type["CheckpointLoaderSimple"]["ckpt_name"] == checkpoint
    assert by_type["SalientBG_ControlNetLoader"]["controlnet"] == controlnet
    assert by_type["SalientBG_FrameForSD2"]["size"] == size
    ui = load(os.path.join(WORKFLOWS, f"background_generation_paper_{variant}.json"))
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "none is published" in note and f"training train --base {base}" in note
    assert f"models/controlnet/{controlnet}" in note and checkpoint in note
