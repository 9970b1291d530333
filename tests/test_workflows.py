"""Every shipped workflow is valid against ComfyUI 0.3.64's core node schemas plus the pack's own, its UI and API
twins describe the same graph, the files are what workflows/build_workflows.py writes, and the checker itself
catches broken copies."""
from __future__ import annotations

import copy
import importlib.util
import json
import os

import pytest

from sb_testkit import workflow_check

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(REPO_ROOT, "workflows")
OBJECT_INFO = os.environ.get("SALIENT_BG_OBJECT_INFO") or os.path.join(REPO_ROOT, "..", "shared", "comfyui", "object_info.json")
UI_FILES = workflow_check.workflow_files(WORKFLOWS)


@pytest.fixture(scope="module")
def schemas():
    assert os.path.isfile(OBJECT_INFO), (
        f"ComfyUI's core node schemas not found at {OBJECT_INFO}: the repository expects shared/comfyui/object_info.json "
        "beside the clone, or SALIENT_BG_OBJECT_INFO pointing at an /object_info answer")
    return workflow_check.load_schemas(OBJECT_INFO)


def load(path):
    with open(path) as handle:
        return json.load(handle)


def test_there_are_four_workflows_each_with_an_api_twin():
    names = [os.path.basename(p) for p in UI_FILES]
    assert len(names) == 4, names
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
