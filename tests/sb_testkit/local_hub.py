"""A local stand-in for the model hosts: the registry's rows served from 127.0.0.1 with tiny files' real checksums."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os

from salient_background.models.model_files import model_registry

from .local_http import LocalFileServer
from .sam import cached_checkpoint


def tiny_stand_in(entry, tiny, inspyrenet_path: str, single_file: str | None = None) -> str:
    """The tiny file that stands in for a registry row (``tiny``: the session's TinySDModels)."""
    if entry.key == "sd2_inpainting" and single_file is not None:
        return single_file
    if entry.folder == "diffusers":
        return os.path.join(tiny.si2_dir, *entry.filename.split("/")[1:])
    if entry.key.startswith("controlnet"):
        return os.path.join(tiny.controlnet_dir, entry.basename)
    if entry.key.startswith("inspyrenet"):
        return inspyrenet_path
    if entry.key == "sam_vit_b":
        return cached_checkpoint("tiny")
    raise AssertionError(f"no tiny stand-in for {entry.key}")


@contextlib.contextmanager
def local_hub(selection: str, monkeypatch, stand_in):
    """Serve the rows of a download selection (``stand_in(entry) -> path``) and point the registry at them."""
    wanted = {m.key for m in model_registry.select([selection])}
    with LocalFileServer(lifetime=120) as server:
        rows = []
        for m in model_registry.MODEL_FILES:
            if m.key in wanted:
                with open(stand_in(m), "rb") as fh:
                    data = fh.read()
                server.files[f"/{m.key}"] = data
                m = dataclasses.replace(m, urls=(server.url(f"/{m.key}"),), size=len(data), md5=None,
                                        sha256=hashlib.sha256(data).hexdigest())
            rows.append(m)
        monkeypatch.setattr(model_registry, "MODEL_FILES", tuple(rows))
        monkeypatch.setattr(model_registry, "BY_KEY", {m.key: m for m in rows})
        yield server
