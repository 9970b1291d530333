"""Which inpainting base a model path holds, and whether a salient ControlNet fits it -- read cheaply (configs,
safetensors headers), before any weights are loaded.

``generate`` and :func:`models.generation.pipeline.load_pipeline` use it to pick the base (:mod:`.bases`) from the
model itself: a diffusers folder by its ``unet/config.json``, a single file by its key names. A ControlNet of
another base is one error naming both bases.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ..errors import InputError
from .bases import BASES, InpaintingBase, base_for_pretrained_folder, base_for_state_dict, base_for_structure

# key prefixes of the text encoders in original-layout single files, one per base
_SINGLE_FILE_TEXT_KEYS = (
    ("conditioner.embedders.1.", "sdxl-inpainting"),  # SDXL: two encoders under conditioner.embedders.*
    ("cond_stage_model.model.", "sd2-inpainting"),  # SD2: OpenCLIP
    ("cond_stage_model.transformer.", "sd15-inpainting"),  # SD1.x: OpenAI CLIP (transformers layout)
)


# SDXL's added-conditioning embedding: diffusers ``add_embedding.*``, ComfyUI/ldm ``label_emb.*`` (maybe prefixed)
_ADDED_EMBEDDING = ("add_embedding.", "label_emb.")


def base_of_model(path: Union[str, os.PathLike]) -> InpaintingBase:
    """The base of an inpainting model path (diffusers folder or original-layout single file), no weights read.

    A ``.ckpt`` pickle cannot be read without loading it whole; it is taken for SD2 (the only base whose single file
    the pipeline loads)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return base_for_pretrained_folder(path)
    if path.lower().endswith((".safetensors", ".sft")) and os.path.isfile(path):
        keys = _safetensors_keys(path)
        for prefix, name in _SINGLE_FILE_TEXT_KEYS:
            if any(k.startswith(prefix) for k in keys):
                return BASES[name]
    return BASES["sd2-inpainting"]


def _safetensors_keys(path: str) -> list[str]:
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            return list(fh.keys())
    except Exception:  # not readable as safetensors: the loader reports it with its own message
        return []


def _safetensors_shapes(path: str) -> dict:
    """{key: meta tensor of the stored shape} of a safetensors file, read from its header only."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}


def _base_from_controlnet_config(config: dict) -> Optional[InpaintingBase]:
    from ..networks.controlnet_checkpoint import BASE_RECORD

    if config.get(BASE_RECORD) in BASES:
        return BASES[config[BASE_RECORD]]
    if config.get("cross_attention_dim") is None:
        return None
    try:
        from .bases import base_for_unet_config

        return base_for_unet_config(config)
    except InputError:  # widths of no released model (a test model): judge by structure
        return base_for_structure(added_conditioning=config.get("addition_embed_type"),
                                  use_linear_projection=config.get("use_linear_projection", False))


def controlnet_base_cheaply(path: Union[str, os.PathLike]) -> Optional[InpaintingBase]:
    """The base of a salient ControlNet path from what is cheap to read -- its config (``salient_base`` record or
    widths), the safetensors metadata or header shapes -- or None when only loading the weights could tell (a
    ``.pth`` pickle without a config). Paths that are not a ControlNet give None too: the loader explains those."""
    from ..errors import CheckpointError
    from ..networks.controlnet_checkpoint import (_config_beside, _config_in_metadata, _recorded_base,
                                                  resolve_controlnet_path)

    try:
        weight_files, folder_config, _ = resolve_controlnet_path(os.fspath(path))
        recorded = _recorded_base(folder_config, weight_files)
    except CheckpointError:
        return None
    if recorded is not None:
        return recorded
    if folder_config is not None:
        return _base_from_controlnet_config(folder_config)
    if len(weight_files) == 1:
        config = _config_beside(weight_files[0]) or _config_in_metadata(weight_files[0])
        found = _base_from_controlnet_config(config) if config else None
        if found is not None:
            return found
    if all(f.lower().endswith((".safetensors", ".sft")) for f in weight_files):
        shapes: dict = {}
        for f in weight_files:
            shapes.update(_safetensors_shapes(f))
        return _base_from_shapes(shapes)
    return None


def _base_from_shapes(shapes: dict) -> Optional[InpaintingBase]:
    try:
        return base_for_state_dict(shapes)
    except InputError:
        proj = next((v for k, v in shapes.items() if k.endswith("proj_in.weight")), None)
        added = "text_time" if any(k.startswith(_ADDED_EMBEDDING) or any(f".{p}" in k for p in _ADDED_EMBEDDING)
                                   for k in shapes) else None
        return base_for_structure(added_conditioning=added,
                                  use_linear_projection=None if proj is None else proj.ndim == 2)


def mismatch_message(model_base: InpaintingBase, controlnet_base: InpaintingBase, controlnet_path: str) -> str:
    return (f"the ControlNet {os.fspath(controlnet_path)!r} is for {controlnet_base.title} ({controlnet_base.name}) "
            f"but the base model is {model_base.title} ({model_base.name}): a salient ControlNet only steers the "
            "inpainting UNet it was trained on; give a ControlNet trained for this base, or the base model it was "
            "trained on")


def check_controlnet_fits(model_base: InpaintingBase, controlnet_path: Optional[str]) -> None:
    """Raise :class:`InputError` when the ControlNet at ``controlnet_path`` is, by its configs or header, for
    another base than ``model_base`` (nothing is said when only its weights could tell: the loader checks then)."""
    if not controlnet_path:
        return
    found = controlnet_base_cheaply(controlnet_path)
    if found is not None and found.name != model_base.name:
        raise InputError(mismatch_message(model_base, found, controlnet_path))
