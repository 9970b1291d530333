"""The shipped UI workflows, opened the way a user opens them: ComfyUI's own frontend (served by the real server,
in headless Chromium) loads each file with ``app.loadGraphData`` and ``app.graphToPrompt()`` must give exactly its
API twin in ``workflows/api/`` (node types, links, every widget value). A widget the frontend adds that the file
does not know about (e.g. "control after generate" after an INT named ``seed``) shifts the stored values into the
wrong widgets, and this test sees it.

Also here: the pack's node schemas as the server describes them equal what the unit tests' checker derives from the
code, the pack put the workflows' example photo into the fresh input folder at startup and a workflow queued from
its API twin runs on it, and the frontend's missing-models dialog lists the loaders' model entries.

Skipped without ``COMFYUI_PATH`` (conftest), and the browser tests with the reason when Playwright's Python package
or a Chromium is missing (see README.md: ``CHROMIUM_PATH``).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from sb_testkit import workflow_check

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKFLOWS = REPO / "workflows"
UI_FILES = sorted(p.name for p in WORKFLOWS.glob("*.json"))
EXAMPLE_IMAGE = WORKFLOWS / "inputs" / "example_product.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP_READY_TIMEOUT_MS = 180_000

# The template browser's route for a custom node's workflows/ folder; window.app is set by the frontend once
# app.setup() finished (window.comfyAPI.app.app exists earlier).
LOAD_TEMPLATE_AND_CONVERT = """
async (address) => {
  const workflow = await (await fetch(address)).json();
  const app = window.app;
  await app.loadGraphData(workflow, true, false, null,
                          {showMissingNodesDialog: false, showMissingModelsDialog: false});
  const { output } = await app.graphToPrompt();
  return { workflow, output };
}
"""


def _chromium_executable() -> str | None:
    """CHROMIUM_PATH, else a Chromium/Chrome on PATH, else None (Playwright's own download, if installed)."""
    named = os.environ.get("CHROMIUM_PATH", "").strip()
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")  # session: set up before the session's server
def sync_api():
    """Playwright's sync API (asked for before the server starts, so a missing one skips at once)."""
    return pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs Playwright's Python package: pip install playwright")


@pytest.fixture(scope="module")
def page(sync_api, comfy, tmp_path_factory):
    """A page of ComfyUI's frontend, ready (window.app set); requests beyond the server are refused."""
    executable = _chromium_executable()
    with sync_api.sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
                args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - no browser is a reason to skip, said plainly
            pytest.skip(f"no Chromium to drive ({exc.__class__.__name__}: {str(exc).splitlines()[0]}): install one "
                        "(e.g. apt-get install chromium) or set CHROMIUM_PATH; see tests/integration/README.md")
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(comfy.base_url)
                      else route.abort())
        browser_page = context.new_page()
        browser_page.goto(comfy.base_url, wait_until="domcontentloaded")
        browser_page.wait_for_function("() => window.app && window.app.graph && window.app.canvas",
                                       timeout=APP_READY_TIMEOUT_MS)
        try:
            yield browser_page
        finally:
            context.close()


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _comparable(prompt: dict, schemas: dict) -> dict:
    """{id: (class_type, inputs)} without _meta and without values that are no inputs of the node's schema (the
    frontend may send control_after_generate settings of controlled widgets)."""
    out = {}
    for node_id, node in prompt.items():
        known = {name for name, _, _ in workflow_check._input_specs(schemas[node["class_type"]])}
        inputs = {k: v for k, v in node["inputs"].items() if not (k == "control_after_generate" and k not in known)}
        out[str(node_id)] = (node["class_type"], inputs)
    return out


@pytest.fixture(scope="module")
def schemas(comfy):
    return comfy.object_info()


def test_the_template_browser_lists_the_workflows(comfy):
    """ComfyUI serves a custom node's workflows/ folder to its template browser, under the clone's folder name."""
    listed = comfy.get_json("/workflow_templates").get(REPO.name, [])
    assert sorted(listed) == sorted(Path(name).stem for name in UI_FILES)


@pytest.mark.parametrize("name", UI_FILES)
def test_the_frontend_turns_each_ui_workflow_into_its_api_twin(page, schemas, name):
    """The workflow as the template browser fetches it, loaded by the frontend, sent as its API twin says."""
    api = _load(WORKFLOWS / "api" / name)
    result = page.evaluate(LOAD_TEMPLATE_AND_CONVERT, f"/api/workflow_templates/{REPO.name}/{name}")
    assert result["workflow"] == _load(WORKFLOWS / name)
    prompt = result["output"]
    got, want = _comparable(prompt, schemas), _comparable(api, schemas)
    assert sorted(got) == sorted(want), "node ids differ (notes must not be sent)"
    for node_id in want:
        assert got[node_id] == want[node_id], f"{name} node {node_id}: the frontend sends {got[node_id]}, " \
                                              f"the API twin says {want[node_id]}"


def test_the_frontend_lists_the_missing_models_of_a_workflow(page, comfy):
    """properties.models as the frontend reads them: the dialog names each absent file as 'folder / name'."""
    ui = _load(WORKFLOWS / "background_generation_paper.json")
    entries = {(m["directory"], m["name"]) for n in ui["nodes"] for m in n.get("properties", {}).get("models", [])}
    absent = sorted(e for e in entries if not (comfy.models_dir / e[0] / e[1]).exists())
    if not absent:
        pytest.skip("every model of the workflow is present in this session's model folders")
    page.evaluate("""async (workflow) => { await window.app.loadGraphData(workflow, true, false, null,
                       {showMissingNodesDialog: false, showMissingModelsDialog: true}); }""", ui)
    for directory, name in absent:
        page.get_by_text(f"{directory} / {name}").first.wait_for(timeout=30_000)
    page.keyboard.press("Escape")


def test_the_servers_pack_schemas_are_the_checkers(comfy):
    """The unit tests describe the pack's nodes from the code (workflow_check.pack_object_info): the server agrees
    on every input spec, the input order and the outputs."""
    served = comfy.object_info()
    ours = json.loads(json.dumps(workflow_check.pack_object_info(), default=str))
    for node_type, schema in ours.items():
        assert node_type in served, node_type
        served_inputs = _without_model_file_choices(served[node_type]["input"], schema["input"])
        assert served_inputs == schema["input"], (node_type, "input")
        for key in ("input_order", "output", "output_name", "output_is_list"):
            assert served[node_type][key] == schema[key], (node_type, key)


def _without_model_file_choices(served: dict, ours: dict) -> dict:
    """The loaders' choices list the model files the server has (other tests add some); outside ComfyUI the same
    lists are empty. Compare everything else."""
    served = json.loads(json.dumps(served))
    for section, specs in ours.items():
        for name, spec in specs.items():
            if isinstance(spec[0], list) and not spec[0] and name in served.get(section, {}):
                served[section][name][0] = []
    return served


def test_a_fresh_input_folder_gets_the_example_photo_and_a_workflow_runs(comfy):
    """The harness starts ComfyUI on an empty temporary input folder: the pack copied the example photo there when
    it loaded, so the cut-out workflow's API twin runs as shipped (its salient model a random-weight one, switched
    to the fast checkpoint to keep the run short); the cut-out keeps the photo's pixels."""
    from PIL import Image
    import numpy as np
    from sb_testkit.inspyrenet import write_random_checkpoint

    assert "copied the example inputs example_product.png" in comfy.log_text()
    assert (comfy.input_dir / EXAMPLE_IMAGE.name).read_bytes() == EXAMPLE_IMAGE.read_bytes()
    checkpoint = comfy.models_dir / "salient" / "ckpt_fast.pth"
    if not checkpoint.exists():
        write_random_checkpoint(checkpoint.with_suffix(".tmp"), "fast", seed=0)
        checkpoint.with_suffix(".tmp").rename(checkpoint)
    prompt = _load(WORKFLOWS / "api" / "cutout_rgba_batch.json")
    for node in prompt.values():
        if node["class_type"] == "SalientBG_LoadSalientModel":
            node["inputs"].update(mode="fast", checkpoint=checkpoint.name)
    outputs = comfy.run(prompt, timeout=600)
    cutout_id = next(k for k, v in prompt.items()
                     if v["class_type"] == "SaveImage" and v["inputs"]["filename_prefix"].endswith("/cutout"))
    saved = comfy.output_files(outputs, cutout_id)
    assert len(saved) == 1 and saved[0].is_file()
    with Image.open(saved[0]) as got, Image.open(EXAMPLE_IMAGE) as want:
        assert got.mode == "RGBA"
        assert np.abs(np.asarray(got)[..., :3].astype(int) - np.asarray(want.convert("RGB")).astype(int)).max() <= 1
