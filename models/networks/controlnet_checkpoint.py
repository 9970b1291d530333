"""Read the salient-aware ControlNet in every form a user has, as ONE diffusers-key state dict + config.

Forms (``path`` may be any of them):

* the Hugging Face ``yahoo-inc/photo-background-generation`` pipeline folder: ``controlnet/config.json`` +
  ``controlnet/diffusion_pytorch_model.safetensors`` (or ``.bin``; ``.fp16`` variants and a sharded index too);
* a bare diffusers ControlNet folder (``config.json`` + weights), which is also what our trainer exports;
* a single weights file with diffusers keys (``.safetensors``/``.sft``/``.bin``/``.pth``/``.pt``/``.ckpt``), e.g. the
  weights file of such a folder used on its own;
* the released ``controlnet_inpainting_salient_aware.pth``: a torch pickle whose inner layout is not documented --
  a plain state dict, keys prefixed ``module.``, or nested under ``state_dict`` / ``model`` are all accepted;
* ldm/ComfyUI key names (``input_hint_block.*``, optionally under ``control_model.``) are converted back.

A file without a config gets one from, in order: an explicit ``config``, a diffusers ControlNet ``config.json``
beside it, a ``config`` entry in the safetensors metadata, and finally inference from the tensor shapes (the
number of attention heads cannot be read from weights: the base's are assumed -- 64 channels per head for SD2 and
SDXL, 8 heads for SD1.5).

Every file is for one inpainting base (:mod:`models.bases`: SD2, SD1.5 or SDXL inpainting). Our exports record it
(``salient_base`` in ``config.json`` and in the safetensors metadata); for a file without the record (the paper's
release) it is read from the weights. :func:`controlnet_base` says which (:func:`controlnet_base_cheaply` without
reading weights); the messages name it, and say how to get a ControlNet for the base that was wanted.

Everything is validated as a 9-input-channel ControlNet of its base (:func:`validate_salient_controlnet`); errors
name what was found. No diffusers import unless :func:`build_diffusers_controlnet` is called (ComfyUI does not need
it).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Optional, Union

import torch

from .checkpoint_io import (SAFETENSORS_SUFFIXES, WEIGHT_SUFFIXES, describe_keys, load_state_dict, read_json_object,
                            unwrap_state_dict)
from .comfy_keys import (
    ControlNetLayout,
    convert_comfy_to_diffusers,
    expected_diffusers_keys,
    looks_like_comfy_controlnet,
    looks_like_diffusers_controlnet,
)
from ..bases import (BASE_RECORD, BASES, InpaintingBase, as_base, base_from_weights, base_of_controlnet_config,
                     how_to_get_any_controlnet, how_to_get_controlnet)
from ..errors import CheckpointError

log = logging.getLogger("salient_background")

SD2_CROSS_ATTENTION_DIM = 1024
SALIENT_IN_CHANNELS = 9
HINT_CHANNELS = 3
SD2_HEAD_SIZE = 64
FILE_BASE = "file's base"  # the default width check: the width of the base the file is for
WHAT = "salient ControlNet"
# where a ControlNet of a base not known yet comes from, per base (the model registry and the base table say it);
# a file of a known base gets :func:`models.bases.how_to_get_controlnet` of that base instead
WHERE_TO_GET = (how_to_get_any_controlnet() + " (The paper's ControlNet also loads as "
                "controlnet_inpainting_salient_aware.pth from the authors' release.)")

# The SD2-inpainting ControlNet as the paper made it (ControlNetModel.from_unet of 512-inpainting-ema)
SD2_SALIENT_CONTROLNET_CONFIG = {
    "_class_name": "ControlNetModel",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": [16, 32, 96, 256],
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "upcast_attention": False,
    "use_linear_projection": True,
}
SDXL_POOLED_WIDTH = 1280

_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
_INDEX_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


# ---------------------------------------------------------------------------------------------------------------
# locating files
# ---------------------------------------------------------------------------------------------------------------


def is_controlnet_folder(path: str) -> bool:
    """A folder the loader accepts: ``config.json`` inside, or a pipeline folder with ``controlnet/config.json``."""
    return os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "controlnet", "config.json"))


def _folder_weights(folder: str) -> list[str]:
    for name in _INDEX_NAMES:
        index = os.path.join(folder, name)
        if os.path.isfile(index):
            weight_map = read_json_object(index).get("weight_map", {})
            return [os.path.join(folder, f) for f in sorted(set(weight_map.values()))]
    for name in _WEIGHT_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    others = sorted(f for f in os.listdir(folder) if f.lower().endswith(WEIGHT_SUFFIXES))
    if len(others) == 1:
        return [os.path.join(folder, others[0])]
    listing = ", ".join(sorted(os.listdir(folder))) or "(empty)"
    raise CheckpointError(
        f"the ControlNet folder {folder!r} has a config.json but no single weights file "
        f"(looked for {', '.join(_WEIGHT_NAMES)}); it holds: {listing}"
    )


def _config_beside(path: str) -> Optional[dict]:
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(candidate):
        cfg = read_json_object(candidate)
        if cfg.get("_class_name") in ("ControlNetModel", None) and "block_out_channels" in cfg:
            return cfg
    return None


def _config_in_metadata(path: str) -> Optional[dict]:
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:
        return None
    text = meta.get("config")
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except ValueError:
        return None
    return cfg if isinstance(cfg, dict) else None


def _base_record_in_metadata(path: str) -> Optional[str]:
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            return (fh.metadata() or {}).get(BASE_RECORD)
    except Exception:
        return None


def _recorded_base(config: Optional[Mapping], weight_files: list[str]) -> Optional[InpaintingBase]:
    """The base an export recorded (config.json first, then the safetensors metadata), or None."""
    name = (config or {}).get(BASE_RECORD)
    for wf in weight_files:
        name = name or _base_record_in_metadata(wf)
    if name is None:
        return None
    if name not in BASES:
        raise CheckpointError(f"the {WHAT} says it is for base {name!r}, which this version does not know "
                              f"(known: {', '.join(BASES)}); update the pack")
    return BASES[name]


def controlnet_base(path_or_state_dict: Union[str, os.PathLike, Mapping]) -> InpaintingBase:
    """The inpainting base a salient ControlNet (any accepted path, or a state dict) is for: the base our export
    recorded, else the one its weights show."""
    if isinstance(path_or_state_dict, Mapping):  # any key style: the keys read are named alike in all of them
        state = unwrap_state_dict(path_or_state_dict)
        return base_from_weights({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    weight_files, folder_config, _ = resolve_controlnet_path(path_or_state_dict)
    recorded = _recorded_base(folder_config, weight_files)
    if recorded is not None:
        return recorded
    state: dict = {}
    for wf in weight_files:
        state.update(normalize_controlnet_state_dict(load_state_dict(wf, what=WHAT), source=f"{WHAT} {wf!r}"))
    return base_from_weights(state)


def controlnet_base_cheaply(path: Union[str, os.PathLike]) -> Optional[InpaintingBase]:
    """The base of a salient ControlNet path from what is cheap to read -- its config (``salient_base`` record or
    widths), the safetensors metadata or header shapes -- or None when only loading the weights could tell (a
    ``.pth`` pickle without a config). Paths that are not a ControlNet give None too: the loader explains those."""
    try:
        weight_files, folder_config, _ = resolve_controlnet_path(os.fspath(path))
        recorded = _recorded_base(folder_config, weight_files)
    except CheckpointError:
        return None
    if recorded is not None:
        return recorded
    if folder_config is not None:
        return base_of_controlnet_config(folder_config)
    if len(weight_files) == 1:
        config = _config_beside(weight_files[0]) or _config_in_metadata(weight_files[0])
        found = base_of_controlnet_config(config) if config else None
        if found is not None:
            return found
    if all(f.lower().endswith(SAFETENSORS_SUFFIXES) for f in weight_files):
        shapes: dict = {}
        for f in weight_files:
            shapes.update(_safetensors_shapes(f))
        return base_from_weights(shapes)
    return None


def _safetensors_shapes(path: str) -> dict:
    """{key: meta tensor of the stored shape} of a safetensors file, read from its header only."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}


# ---------------------------------------------------------------------------------------------------------------
# state dict normalisation
# ---------------------------------------------------------------------------------------------------------------
def _describe_container(obj: Mapping) -> str:
    parts = []
    for k, v in list(obj.items())[:8]:
        kind = f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        if isinstance(v, Mapping):
            kind = f"dict of {len(v)}"
        parts.append(f"{k!r}: {kind}")
    more = f", ... ({len(obj)} entries)" if len(obj) > 8 else ""
    return "{" + ", ".join(parts) + more + "}"


def _what_else_is_it(keys: set) -> str:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "This is a full Stable Diffusion checkpoint (model.diffusion_model.*), not a ControlNet: load it with Load Checkpoint."
    if "conv_out.weight" in keys and any(k.startswith("up_blocks.") for k in keys):
        return "This is a diffusers UNet, not a ControlNet."
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return "This is a VAE, not a ControlNet."
    if any(k.startswith(("image_encoder.", "mask_decoder.")) for k in keys):
        return "This is a SAM checkpoint, not a ControlNet."
    return "It is not a ControlNet state dict."


def normalize_controlnet_state_dict(raw: Mapping, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``model`` nesting and ``module.`` prefixes, convert ldm names to diffusers names.

    Raises :class:`CheckpointError` describing what the file holds when it is none of the known layouts.
    """
    state = unwrap_state_dict(raw)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    keys = set(tensors)
    if looks_like_diffusers_controlnet(keys):
        dropped = set(state) - keys
        if dropped:
            log.info("%s: ignoring non-tensor entries %s", source, sorted(dropped)[:5])
        return tensors
    if looks_like_comfy_controlnet(keys):
        prefixed = {k: v for k, v in tensors.items() if k.startswith("control_model.")}
        return convert_comfy_to_diffusers(prefixed or tensors)
    if not keys:
        raise CheckpointError(
            f"{source} holds no tensors where a ControlNet state dict was expected; found {_describe_container(state)}. "
            "Accepted layouts: a plain state dict, keys prefixed 'module.', or one nested under 'state_dict' or 'model'."
        )
    raise CheckpointError(
        f"{source} does not hold a ControlNet: {_what_else_is_it(keys)} Found keys: {describe_keys(keys)}. "
        f"Expected diffusers ControlNet keys such as 'controlnet_cond_embedding.conv_in.weight'. {WHERE_TO_GET}"
    )


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------
def infer_config(state_dict: Mapping, base: Optional[InpaintingBase] = None) -> dict:
    """A diffusers ``ControlNetModel`` config read off the tensor shapes; what weights do not say comes from the base
    (head counts) and the released models (32 norm groups, sinusoidal time embedding with cos first)."""
    base = base or base_from_weights(state_dict)
    layout = ControlNetLayout.from_diffusers_keys(state_dict)
    cfg = dict(SD2_SALIENT_CONTROLNET_CONFIG)
    cfg["in_channels"] = int(state_dict["conv_in.weight"].shape[1])
    cfg["conditioning_channels"] = int(state_dict["controlnet_cond_embedding.conv_in.weight"].shape[1])
    cfg["block_out_channels"] = list(layout.block_out_channels)
    cfg["layers_per_block"] = layout.layers_per_block
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in layout.transformer_depth]
    cfg["conditioning_embedding_out_channels"] = list(layout.cond_embedding_channels)
    if isinstance(base.attention_head_dim, int):  # SD1.5: one head count everywhere
        cfg["attention_head_dim"] = base.attention_head_dim
    else:  # SD2 and SDXL: 64 channels per head
        cfg["attention_head_dim"] = [max(1, c // SD2_HEAD_SIZE) for c in layout.block_out_channels]
    added = state_dict.get("add_embedding.linear_1.weight")
    if added is not None:  # SDXL's text_time embedding: pooled text embedding + six size/crop features
        time_width = (int(added.shape[1]) - SDXL_POOLED_WIDTH) // 6  # SDXL's: (2816 - 1280) / 6 = 256
        cfg.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=int(added.shape[1]),
                   addition_time_embed_dim=time_width if time_width > 0 else 256)
    depths = [d for d in layout.transformer_depth if d] or [layout.mid_transformer_depth or 1]
    if len(set(depths)) > 1 or depths[0] != 1:
        cfg["transformer_layers_per_block"] = [d or 1 for d in layout.transformer_depth]
    if not layout.mid_transformer_depth:
        cfg["mid_block_type"] = "UNetMidBlock2D"
    width = _cross_attention_width(state_dict)
    if width is not None:
        cfg["cross_attention_dim"] = width
    proj = next((v for k, v in state_dict.items() if k.endswith("attentions.0.proj_in.weight")), None)
    if proj is not None:
        cfg["use_linear_projection"] = proj.ndim == 2
    return cfg


def _cross_attention_width(state_dict: Mapping) -> Optional[int]:
    for k, v in state_dict.items():
        if k.endswith("attn2.to_k.weight"):
            return int(v.shape[1])
    return None


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------
def _added_embedding_keys(config: Mapping) -> list[str]:
    if config.get("addition_embed_type") != "text_time":
        return []
    return [f"add_embedding.linear_{i}.{b}" for i in (1, 2) for b in ("weight", "bias")]


def _width_problem(state_dict: Mapping, cross_attention_dim, base: InpaintingBase) -> Optional[str]:
    width = _cross_attention_width(state_dict)
    if cross_attention_dim == FILE_BASE:
        known = {b.context_dim: b for b in BASES.values()}
        if width in known and known[width].added_conditioning == base.added_conditioning and known[width] != base:
            return f"its cross-attention width is {width} ({known[width].title}) but it says it is for {base.title}"
        return None
    if cross_attention_dim is not None and width is not None and width != cross_attention_dim:
        family = {b.context_dim: f" ({b.title})" for b in BASES.values()}.get(width, "")
        return f"its cross-attention width is {width}{family}, expected {cross_attention_dim}"
    return None


def _key_problems(state_dict: Mapping, config: Mapping) -> list[str]:
    problems = []
    try:
        layout = ControlNetLayout.from_config(config)
        expected = set(expected_diffusers_keys(layout)) | set(_added_embedding_keys(config))
    except (CheckpointError, TypeError, ValueError) as exc:
        return [f"its config cannot be read as a ControlNet layout ({exc})"]
    missing = expected - set(state_dict)
    unexpected = set(state_dict) - expected
    if missing:
        problems.append(f"{len(missing)} weights are missing: {describe_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights are not part of its config: {describe_keys(unexpected)}")
    if not missing:
        bad = _shape_mismatches(state_dict, config)
        if bad:
            problems.append("weights do not match the config's sizes: " + "; ".join(bad[:5]))
    return problems


def validate_salient_controlnet(
    state_dict: Mapping,
    config: Mapping,
    *,
    cross_attention_dim=FILE_BASE,
    source: str = "checkpoint",
    base: Union[str, InpaintingBase, None] = None,
) -> InpaintingBase:
    """Raise :class:`CheckpointError` unless this is a 9-input-channel ControlNet with a 3-channel hint whose keys
    are complete for its config, and whose cross-attention width is ``cross_attention_dim`` (by default the width of
    the file's own base; None skips the check). ``base``: the base the file must be for (e.g. the sampled model's).
    Returns the file's base (its ``salient_base`` record in ``config``, else the one its weights show)."""
    recorded = config.get(BASE_RECORD)
    found = as_base(recorded) if recorded in BASES else base_from_weights(state_dict)
    problems = []
    conv_in = state_dict.get("conv_in.weight")
    in_ch = int(conv_in.shape[1]) if conv_in is not None else None
    if in_ch is not None and in_ch != SALIENT_IN_CHANNELS:
        kind = " -- an ordinary text-to-image ControlNet (use ComfyUI's stock ControlNet loader for it)" if in_ch == 4 else ""
        problems.append(
            f"it takes {in_ch} input channels{kind}; the salient ControlNet takes 9 "
            "(4 noisy latents + 1 mask + 4 masked-image latents, cloned from an inpainting UNet)"
        )
    hint = state_dict.get("controlnet_cond_embedding.conv_in.weight")
    if hint is not None and int(hint.shape[1]) != HINT_CHANNELS:
        problems.append(f"its hint (conditioning image) has {int(hint.shape[1])} channels, expected 3")
    width = _width_problem(state_dict, cross_attention_dim, found)
    if width:
        problems.append(width)
    wanted = as_base(base) if base is not None else None
    if wanted is not None and wanted.name != found.name:
        problems.append(f"it is for {found.title} ({found.name}), not {wanted.title}")
    if config.get("in_channels") is not None and in_ch is not None and int(config["in_channels"]) != in_ch:
        problems.append(f"its config says in_channels={config['in_channels']} but the weights take {in_ch}")
    problems += _key_problems(state_dict, config)
    if problems:
        raise CheckpointError(
            f"{source} is not a usable salient-aware (9-channel {found.title}) ControlNet: " + "; ".join(problems)
            + ". " + how_to_get_controlnet(wanted or found)
        )
    return found


def _shape_mismatches(state_dict: Mapping, config: Mapping) -> list[str]:
    bad = []
    channels = list(config.get("block_out_channels", []))
    for i, ch in enumerate(channels):
        w = state_dict.get(f"down_blocks.{i}.resnets.0.conv1.weight")
        if w is not None and int(w.shape[0]) != int(ch):
            bad.append(f"down block {i} has {int(w.shape[0])} channels, config says {ch}")
    w = state_dict.get("conv_in.weight")
    if w is not None and channels and int(w.shape[0]) != int(channels[0]):
        bad.append(f"conv_in has {int(w.shape[0])} output channels, config says {channels[0]}")
    width = _cross_attention_width(state_dict)
    if width is not None and config.get("cross_attention_dim") not in (None, width):
        bad.append(f"cross-attention width {width}, config says {config['cross_attention_dim']}")
    return bad


# ---------------------------------------------------------------------------------------------------------------
# the entry points
# ---------------------------------------------------------------------------------------------------------------
def resolve_controlnet_path(path: Union[str, os.PathLike]) -> tuple[list[str], Optional[dict], str]:
    """(weight files, config or None, description of the form found) for any accepted ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = path
        form = "diffusers ControlNet folder"
        if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, "controlnet", "config.json")):
            folder = os.path.join(folder, "controlnet")
            form = "pipeline folder (controlnet/ sub-folder)"
        if not os.path.isfile(os.path.join(folder, "config.json")):
            listing = ", ".join(sorted(os.listdir(path))[:12]) or "(empty)"
            raise CheckpointError(
                f"{path!r} is a folder without config.json or controlnet/config.json, so it is neither a diffusers "
                f"ControlNet folder nor a pipeline folder; it holds: {listing}. {WHERE_TO_GET}"
            )
        return _folder_weights(folder), read_json_object(os.path.join(folder, "config.json")), form
    if os.path.isfile(path):
        if not path.lower().endswith(WEIGHT_SUFFIXES):
            raise CheckpointError(
                f"{path!r} is not a weights file (expected one of {', '.join(WEIGHT_SUFFIXES)}) nor a model folder"
            )
        return [path], None, "single weights file"
    raise CheckpointError(f"{WHAT} not found: {path!r} does not exist. {WHERE_TO_GET}")


def load_controlnet_state_dict(
    path: Union[str, os.PathLike],
    *,
    config: Optional[Union[Mapping, str, os.PathLike]] = None,
    cross_attention_dim=FILE_BASE,
    default_config: Optional[Mapping] = None,
    base: Union[str, InpaintingBase, None] = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load any accepted form (module docstring) -> (diffusers-key state dict, diffusers config), validated.

    ``config``: a config dict or a path to a ``config.json`` overriding what the file says or implies.
    ``cross_attention_dim``: the width the ControlNet must have; by default its own base's (see
    :func:`controlnet_base`), or pass the UNet's ``cross_attention_dim``, or None to skip that check.
    ``base``: the base the file must be for (the sampled model's), named in the error when it is not.
    The returned config carries the file's base as ``salient_base``.
    ``default_config``: settings the weights cannot tell (``attention_head_dim``, ``norm_num_groups``, ...), applied
    over the inferred config when no config is found -- e.g. those of the UNet the ControlNet was cloned from.
    Tensors keep their stored dtype.
    """
    weight_files, folder_config, form = resolve_controlnet_path(path)
    state: dict[str, torch.Tensor] = {}
    for wf in weight_files:
        raw = load_state_dict(wf, what=WHAT)
        state.update(normalize_controlnet_state_dict(raw, source=f"{WHAT} {wf!r}"))
    if isinstance(config, (str, os.PathLike)):
        config = read_json_object(os.fspath(config))
    recorded = _recorded_base(folder_config, weight_files)
    cfg = dict(config) if config is not None else None
    if cfg is None:
        cfg = dict(folder_config) if folder_config is not None else None
    if cfg is None and len(weight_files) == 1:
        cfg = _config_beside(weight_files[0]) or _config_in_metadata(weight_files[0])
    if cfg is None:
        cfg = infer_config(state, recorded)
        log.info("%s %s: no config found, inferred from the weights", WHAT, os.fspath(path))
        # [4b/pipeline] ``default_config``: settings the weights cannot tell (head counts, norm groups, ...), e.g. those
        # of the UNet the ControlNet was cloned from; they replace the SD2 assumptions of the inference only when the
        # checkpoint brings no config of its own.
        if default_config:
            cfg.update({k: v for k, v in default_config.items() if not k.startswith("_")})
    if recorded is not None:
        cfg[BASE_RECORD] = recorded.name
    found = validate_salient_controlnet(state, cfg, cross_attention_dim=cross_attention_dim, base=base,
                                        source=f"{WHAT} {os.fspath(path)!r} ({form})")
    cfg[BASE_RECORD] = found.name
    return state, cfg


def build_diffusers_controlnet(
    path: Union[str, os.PathLike],
    *,
    config: Optional[Union[Mapping, str, os.PathLike]] = None,
    cross_attention_dim=FILE_BASE,
    default_config: Optional[Mapping] = None,
    base: Union[str, InpaintingBase, None] = None,
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device, None] = None,
):
    """A diffusers ``ControlNetModel`` (eval mode) from any accepted form, weights loaded strictly."""
    from diffusers import ControlNetModel

    from ..library_progress import apply_library_progress_setting

    apply_library_progress_setting()
    state, cfg = load_controlnet_state_dict(
        path, config=config, cross_attention_dim=cross_attention_dim, default_config=default_config, base=base
    )
    init_cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != BASE_RECORD}
    model = ControlNetModel.from_config(init_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{WHAT} {os.fspath(path)!r} does not fit its config: missing {describe_keys(missing) or 'none'}; "
            f"unexpected {describe_keys(unexpected) or 'none'}"
        )
    model.eval()
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model
