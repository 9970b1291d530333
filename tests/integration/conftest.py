"""Integration harness: a real, headless ComfyUI server with the pack loaded from outside its tree.

Everything under ``tests/integration/`` is marked ``comfyui`` and skipped (with the reason printed) unless the
environment variable ``COMFYUI_PATH`` names a ComfyUI checkout (the folder holding its ``main.py``). The server
runs under ``COMFYUI_PYTHON`` (a venv with ComfyUI's requirements and the pack's) or, by default, this Python.

One server per test session (``comfy`` fixture). It gets its own port, a temporary input/output/temp/user folder,
an in-memory database and an ``extra_model_paths`` YAML that

* loads the pack through ``custom_nodes:`` naming the folder that *contains* the repository (so it is imported
  from outside ComfyUI's tree, under whatever name the clone has), and
* points every model folder the pack uses at a per-session temporary ``models`` folder that tests fill with
  random-weight files (``comfy.models_dir / "salient"`` ...).

Helpers on the fixture: ``object_info()``, ``post_prompt(api_prompt) -> prompt_id``,
``wait_for_history(prompt_id, timeout) -> outputs`` (raises :class:`ComfyRunError` with the node errors or the
execution error text), ``run(api_prompt)`` (both), ``get_json(path)``, ``log_text()``.
The server is stopped by its own process id at the end of the session.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "").strip()
SKIP_REASON = (
    "needs a real ComfyUI: set COMFYUI_PATH to a ComfyUI checkout (the folder holding main.py) and "
    "COMFYUI_PYTHON to a Python with its requirements (see tests/integration/README.md)"
)
if str(HERE.parent) not in sys.path:  # tests/ (sb_testkit), also when a script imports this file
    sys.path.insert(0, str(HERE.parent))

# the server itself lives in sb_testkit, shared with benchmarks/soak_comfyui.py
from sb_testkit.comfy_server import MODEL_FOLDERS, PACK_ROOT, ComfyRunError, ComfyServer  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            inside = Path(str(item.fspath)).resolve().is_relative_to(HERE)
        except (OSError, ValueError):
            inside = False
        if not inside:
            continue
        item.add_marker(pytest.mark.comfyui)
        if not COMFYUI_PATH:
            item.add_marker(pytest.mark.skip(reason=f"COMFYUI_PATH is unset: {SKIP_REASON}"))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """The running ComfyUI server (see the module docstring). Fails loudly if COMFYUI_PATH is wrong."""
    if not COMFYUI_PATH:
        pytest.skip(f"COMFYUI_PATH is unset: {SKIP_REASON}")
    root = Path(COMFYUI_PATH).expanduser().resolve()
    if not (root / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH!r} has no main.py: point it at a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
    server = ComfyServer(root, python, tmp_path_factory.mktemp("comfyui"))
    try:
        server.start()
        failed = [line for line in server.pack_import_lines() if "IMPORT FAILED" in line]
        if failed or not server.pack_import_lines():
            pytest.fail(f"ComfyUI did not import the pack from {server.pack_module_path} "
                        f"({failed or 'no import-times line names it'}):\n{server.log_tail(150)}")
        yield server
    finally:
        server.stop()
        print(f"\n[comfyui integration] server log: {server.log_path}")


@pytest.fixture(scope="session")
def comfy_error():
    return ComfyRunError
