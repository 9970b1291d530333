"""Salient Background: salient-object-aware background generation for ComfyUI.

ComfyUI imports this file as ``custom_nodes/<clone>/__init__.py``. It must stay light: node classes import
nothing from ComfyUI (and nothing heavy such as diffusers) at module import time.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
