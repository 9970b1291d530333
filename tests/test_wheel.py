"""A wheel built from the repository holds the package and the data it reads, nothing else.

The repository root is the package ``salient_background`` (pyproject.toml maps it and lists the sub-packages).
These tests build the wheel offline from a copy of the tree and compare its file list with what a walk of the
tree says should be there, so a new sub-package that pyproject.toml forgets fails here.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "salient_background"

# Folders at the root that belong to the repository, not to the package.
NOT_SHIPPED_DIRS = {"tests", "benchmarks", "tools", "docs", ".ci", "build", "dist"}
# Maintainer scripts outside any package (they import the test kit): never shipped.
MAINTAINER_SCRIPTS = {"workflows/build_workflows.py"}
# Build scripts that must not come back (pyproject.toml holds the whole build configuration).
ROOT_BUILD_SCRIPTS = {"setup.py"}
# What the package reads or hands to ComfyUI at run time, besides its code.
PACKAGE_DATA = ["workflows/*.json", "workflows/api/*.json", "workflows/inputs/*"]
# Left out of the copy the wheel is built from (caches, a local venv, earlier builds).
BUILD_JUNK = ["__pycache__", "*.egg-info", ".pytest_cache", ".git", "venv", "build", "dist"]


def _inside_package(rel_dir: str) -> bool:
    """True when the folder and every folder above it, up to the root, holds an __init__.py."""
    parts = [] if rel_dir == "." else rel_dir.split(os.sep)
    return all(os.path.isfile(os.path.join(REPO_ROOT, *parts[:i], "__init__.py")) for i in range(len(parts) + 1))


def repository_python_files() -> tuple[set[str], set[str]]:
    """('/'-separated .py paths inside the package, .py paths outside any package), walking the tree."""
    in_package, loose = set(), set()
    for root, dirs, files in os.walk(REPO_ROOT):
        rel_dir = os.path.relpath(root, REPO_ROOT)
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d == "__pycache__" or d.endswith(".egg-info")
                                           or (rel_dir == "." and d in NOT_SHIPPED_DIRS))]
        inside = _inside_package(rel_dir)
        for name in files:
            if name.endswith(".py"):
                rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                (in_package if inside else loose).add(rel)
    return in_package - ROOT_BUILD_SCRIPTS, loose


def repository_data_files() -> set[str]:
    found = set()
    for pattern in PACKAGE_DATA:
        for path in glob.glob(os.path.join(REPO_ROOT, *pattern.split("/"))):
            if os.path.isfile(path):
                found.add(os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"))
    return found


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory) -> str:
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"setuptools {setuptools.__version__} is too old to build the pack: pip install -e '.[test]'"
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    # a copy, so the build neither writes build/ into the checkout nor picks up a stale one from it
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*BUILD_JUNK))
    out = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = glob.glob(str(out / "*.whl"))
    return wheel


@pytest.fixture(scope="module")
def wheel_names(wheel_path) -> list[str]:
    with zipfile.ZipFile(wheel_path) as archive:
        return archive.namelist()


def _package_files(names: list[str]) -> set[str]:
    prefix = PACKAGE + "/"
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


def test_every_file_sits_in_the_package_or_its_metadata(wheel_names):
    stray = [n for n in wheel_names if not n.startswith(PACKAGE + "/") and ".dist-info/" not in n]
    assert stray == [], f"outside the package: {stray}"


def test_every_module_of_the_package_is_in_the_wheel_and_nothing_else(wheel_names):
    expected, loose = repository_python_files()
    assert loose - MAINTAINER_SCRIPTS == set(), (
        "Python files outside any package (add an __init__.py, or list them as maintainer scripts): "
        f"{sorted(loose - MAINTAINER_SCRIPTS)}")
    assert {"nodes/comfy_glue.py", "models/networks/sam/loading.py", "cli.py"} <= expected  # the walk sees the package
    shipped = {n for n in _package_files(wheel_names) if n.endswith(".py")}
    assert expected - shipped == set(), (
        f"missing from the wheel (add the sub-package to [tool.setuptools] packages): {sorted(expected - shipped)}")
    assert shipped - expected == set(), f"in the wheel but not part of the package: {sorted(shipped - expected)}"
    assert not any(n.split("/")[0] in NOT_SHIPPED_DIRS for n in _package_files(wheel_names))
    assert not os.path.exists(os.path.join(REPO_ROOT, "setup.py")), "the build is configured in pyproject.toml only"


def test_the_workflows_and_example_inputs_are_the_only_data(wheel_names):
    data = {n for n in _package_files(wheel_names) if not n.endswith(".py")}
    expected = repository_data_files()
    assert "workflows/inputs/example_product.png" in expected
    assert any(n.startswith("workflows/api/") for n in expected) and any(n.count("/") == 1 for n in expected)
    assert data == expected


def test_the_installed_wheel_imports_and_runs_its_command(wheel_path, tmp_path):
    """`pip install .` (not editable): the nodes load from the installed copy and the command line answers."""
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), wheel_path],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = "import json, salient_background as p; print(json.dumps([p.__file__, len(p.NODE_CLASS_MAPPINGS)]))"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    where, count = json.loads(shown.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target)) and count > 0
    helped = subprocess.run([sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True,
                            cwd=str(tmp_path), env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr
