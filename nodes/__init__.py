"""ComfyUI node classes (V1 API). Each module below defines its own ``NODE_CLASS_MAPPINGS`` and
``NODE_DISPLAY_NAME_MAPPINGS``; they are merged here. Node ids are prefixed ``SalientBG_`` and never renamed
(saved workflows refer to them)."""
from __future__ import annotations

import importlib

CATEGORY = "Salient Background"

# submodules of salient_background.nodes that define nodes
NODE_MODULES = ["salient_nodes", "mask_nodes", "sam_nodes", "controlnet_nodes", "gate_nodes"]

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in NODE_MODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    duplicate = set(_module.NODE_CLASS_MAPPINGS) & set(NODE_CLASS_MAPPINGS)
    assert not duplicate, f"node ids defined twice: {duplicate}"
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

# Put the shipped workflows' example photo into ComfyUI's input folder (never over a user's file, never failing).
from .example_inputs import install_example_inputs  # noqa: E402

install_example_inputs()
