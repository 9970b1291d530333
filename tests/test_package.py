"""The pack imports the way ComfyUI imports it, whatever the clone's folder is called, and stays light."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What ComfyUI's nodes.load_custom_node does: the folder's __init__.py under the folder's name.
COMFY_STYLE_IMPORT = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    folder = sys.argv[1]
    name = os.path.basename(folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    heavy = sorted(m for m in ("diffusers", "transformers", "segment_anything", "accelerate", "comfy", "folder_paths")
                   if m in sys.modules)
    print(json.dumps({"nodes": sorted(module.NODE_CLASS_MAPPINGS),
                      "names": module.NODE_DISPLAY_NAME_MAPPINGS, "heavy": heavy}))
    """
)


def copy_pack(destination: str) -> None:
    shutil.copytree(REPO_ROOT, destination, ignore=shutil.ignore_patterns(
        ".git", ".ci", "__pycache__", "*.egg-info", ".pytest_cache", "tests", "benchmarks", "build"))


@pytest.mark.parametrize("folder_name", ["main", "ComfyUI-Salient-Background"])
def test_pack_loads_like_comfyui_loads_it_under_any_folder_name(tmp_path, folder_name):
    folder = tmp_path / folder_name
    copy_pack(str(folder))
    result = subprocess.run([sys.executable, "-c", COMFY_STYLE_IMPORT, str(folder)], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    from salient_background import NODE_CLASS_MAPPINGS

    assert info["nodes"] == sorted(NODE_CLASS_MAPPINGS)
    assert info["heavy"] == [], f"imported at pack import time: {info['heavy']}"
    assert set(info["names"]) == set(info["nodes"])


def test_every_node_is_a_complete_v1_node_in_our_category():
    from salient_background import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert NODE_CLASS_MAPPINGS, "the pack defines no nodes"
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("SalientBG_"), node_id
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert cls.CATEGORY.startswith("Salient Background/"), (node_id, cls.CATEGORY)
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        spec = cls.INPUT_TYPES()  # must work without ComfyUI
        assert "required" in spec
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), node_id


def test_command_line_lists_its_commands():
    result = subprocess.run([sys.executable, "-m", "salient_background", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from salient_background.cli import COMMANDS

    for command in COMMANDS:
        assert command in result.stdout


def test_pyproject_has_what_the_comfy_registry_needs():
    import tomllib

    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as handle:
        data = tomllib.load(handle)
    project = data["project"]
    assert project["name"] == "salient-background"
    for key in ("version", "description", "license", "requires-python", "classifiers"):
        assert project.get(key), key
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "Salient Background" and "Icon" in comfy
    assert not any(dep.split("=")[0].split(">")[0].split("<")[0].strip().lower() == "torch"
                   for dep in project["dependencies"]), "torch must not be pinned: ComfyUI provides it"
    with open(os.path.join(REPO_ROOT, "requirements.txt")) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    assert not any(line.lower().startswith("torch") and not line.lower().startswith("torchvision") for line in lines)
    # requirements.txt (for a plain `pip install -r` in a ComfyUI install) lists what pyproject.toml declares
    assert sorted(lines) == sorted(project["dependencies"])
    assert {"pyyaml", "filelock"} <= set(lines)


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(REPO_ROOT, "README.md")) as handle:
        readme = handle.read()
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as handle:
        ci = handle.read()
    assert "python -m pytest -q" in readme
    assert ci.strip().splitlines()[-1] == "python -m pytest -q"
