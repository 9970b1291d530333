"""Test-only ComfyUI extension: ``GET /sb_test/probe`` answers from inside the server process, without a prompt.

Loaded only by the test harness (``sb_testkit.comfy_server`` names this folder in ``custom_nodes:``); it is not
part of the pack and adds no node. The answer:

* ``model_caches``: what the pack's model caches hold (``models/model_files/model_cache.py``'s
  ``cache_contents()``), found through the module already imported by ComfyUI, whatever the pack's folder name;
* ``loaded_models``: the class of each model ComfyUI's model management holds (``current_loaded_models``);
* ``live_modules``: for each class name in ``?classes=A,B``, how many ``torch.nn.Module`` objects of that class are
  alive in the process (the copies in memory, whoever holds them);
* with ``?trim=1``: ``rss_before_trim`` / ``rss_after_trim``, the process's resident bytes before and after handing
  the C allocator's free memory back to the system (glibc's ``malloc_trim(0)``; absent elsewhere). What stays after
  the trim is memory in use; what the trim returns was freed but kept by the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
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


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim() -> dict:
    gc.collect()
    before = _rss_bytes()
    libc_name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim if libc_name else None
    except (OSError, AttributeError):  # not glibc
        trim = None
    if trim is None:
        return {"rss_before_trim": before, "rss_after_trim": None}
    trim(0)
    return {"rss_before_trim": before, "rss_after_trim": _rss_bytes()}


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
        report = _report(classes)
        if request.rel_url.query.get("trim") == "1":
            report.update(_trim())
        return web.json_response(report)


_register_route()
