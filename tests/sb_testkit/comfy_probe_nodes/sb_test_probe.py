"""Test-only ComfyUI extension: ``GET /sb_test/probe`` answers from inside the server process, without a prompt.

Loaded only by the test harness (``sb_testkit.comfy_server`` names this folder in ``custom_nodes:``); it is not
part of the pack and adds no node. The answer:

* ``model_caches``: what the pack's model caches hold (``models/model_files/model_cache.py``'s
  ``cache_contents()``), found through the module already imported by ComfyUI, whatever the pack's folder name;
* ``loaded_models``: the class of each model ComfyUI's model management holds (``current_loaded_models``);
* ``live_modules``: for each class name in ``?classes=A,B``, how many ``torch.nn.Module`` objects of that class are
  alive in the process (the copies in memory, whoever holds them).
"""
from __future__ import annotations

import gc
import sys

NODE_CLASS_MAPPINGS: dict = {}  # ComfyUI loads a custom-node module only if it has this


def _pack_cache_module():
    for module in list(sys.modules.values()):
        path = (getattr(module, "__file__", None) or "").replace("\\", "/")
        if path.endswith("models/model_files/model_cache.py") and hasattr(module, "cache_contents"):
            return module
    return None


def _live_modules(names: list[str]) -> dict[str, int]:
    import torch

    counts = dict.fromkeys(names, 0)
    if not names:  # the cheap probe: no walk over every object
        return counts
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Module):
            name = type(obj).__name__
            if name in counts:
                counts[name] += 1
    return counts


def _report(classes: list[str]) -> dict:
    import comfy.model_management as mm

    module = _pack_cache_module()
    caches = {} if module is None else {name: [list(map(str, key)) for key in keys]
                                        for name, keys in module.cache_contents().items()}
    loaded = [type(getattr(m.model, "model", m.model)).__name__ for m in mm.current_loaded_models if m.model is not None]
    return {"model_caches": caches, "cache_module_found": module is not None, "loaded_models": loaded,
            "live_modules": _live_modules(classes)}


def _register_route() -> None:
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get("/sb_test/probe")
    async def probe(request):
        classes = [c for c in request.rel_url.query.get("classes", "").split(",") if c]
        return web.json_response(_report(classes))


_register_route()
