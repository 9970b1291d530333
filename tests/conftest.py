"""Test configuration.

The tests import the pack as ``salient_background`` whatever the clone's folder is called: through the
installed package when ``pip install -e .`` ran, otherwise by registering the repository root under that name.
"""
from __future__ import annotations

import importlib.util
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_pack_as_salient_background() -> None:
    if "salient_background" in sys.modules:
        return
    spec = importlib.util.find_spec("salient_background")
    if spec is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "salient_background", os.path.join(REPO_ROOT, "__init__.py"), submodule_search_locations=[REPO_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["salient_background"] = module
    spec.loader.exec_module(module)


_import_pack_as_salient_background()

# Shared builders of tiny random models saved in real on-disk formats live in tests/sb_testkit/, importable
# from every test module (`from sb_testkit import ...`). Only the tests folder goes on sys.path, never the root.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


# ---------------------------------------------------------------------------------------------- shared fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def inspyrenet_fast_checkpoint(tmp_path_factory) -> str:
    """A full-size InSPyReNet (Swin-B) with seeded random, calibrated weights, saved as the official flat ``.pth``
    (fast mode, base size 384: the cheapest real configuration)."""
    from sb_testkit.inspyrenet import random_inspyrenet_state_dict, save_pth

    path = tmp_path_factory.mktemp("salient") / "ckpt_fast.pth"
    return save_pth(random_inspyrenet_state_dict(seed=0, base_size=384), path)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """Tiny random SD2-inpainting models + salient ControlNet in every released file form (built once a session)."""
    from sb_testkit.diffusers_models import tiny_sd_models

    return tiny_sd_models(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread (on a busy machine two OpenMP threads are many times slower).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
