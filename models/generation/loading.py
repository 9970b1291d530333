"""Loading the pipeline's models from local files, as a :class:`.model_plan.ModelPlan` describes them.

Loading is offline only (``local_files_only=True``; nothing here touches the network). :func:`load_pipeline` takes the
Hugging Face ``yahoo-inc/photo-background-generation`` folder, or an inpainting model -- a diffusers folder of any
base, or SD2's original-layout single file ComfyUI loads (``512-inpainting-ema.safetensors``) plus the small config
folder -- and a ControlNet in any form that
:func:`models.networks.controlnet_checkpoint.build_diffusers_controlnet` reads. Every check that needs no weights is
made first, once, by :func:`.model_plan.plan_models`; :func:`pipeline_from_plan` and :func:`load_components` take
the plan.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch

from ..errors import CheckpointError
from .model_plan import ModelPlan, plan_models
from .pipeline import DEFAULT_SCHEDULER, SalientBackgroundPipeline, make_scheduler
from .text_encoding import fix_token_length

_LDM_UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
SD2_TITLE = "Stable Diffusion 2 inpainting (stabilityai/stable-diffusion-2-inpainting, 512-inpainting-ema)"


# ---------------------------------------------------------------------------------------------------------------
# the base model's parts
# ---------------------------------------------------------------------------------------------------------------
def _read_single_file(path: str) -> dict:
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    try:
        checkpoint = load_single_file_checkpoint(path, local_files_only=True)
    except Exception as exc:  # a truncated or foreign file: safetensors, pickle and torch raise many kinds
        raise CheckpointError(f"could not read the checkpoint {path!r}: {type(exc).__name__}: {exc}") from exc
    first = checkpoint.get(_LDM_UNET_INPUT)
    if first is None or "cond_stage_model.model.token_embedding.weight" not in checkpoint:
        raise CheckpointError(
            f"{path!r} is not a Stable Diffusion 2 checkpoint in the original layout (no model.diffusion_model.* UNet "
            f"or cond_stage_model.model.* OpenCLIP text encoder). Use {SD2_TITLE}."
        )
    if first.shape[1] != 9:
        raise CheckpointError(
            f"the UNet in {path!r} has {first.shape[1]} input channels; this pipeline needs a 9-channel inpainting "
            f"UNet. Use {SD2_TITLE}."
        )
    return checkpoint


def _load_single_file(path: str, config_dir: str, dtype: torch.dtype):
    """(vae, text_encoder, tokenizer, unet) from an original-layout single file, converted by diffusers with the
    configs of ``config_dir``; every call is local_files_only, so nothing reaches the network."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    checkpoint = _read_single_file(path)
    offline = dict(config=config_dir, torch_dtype=dtype, local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", **offline)
        vae = AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **offline)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, checkpoint, subfolder="text_encoder", **offline)
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(config_dir, "tokenizer"), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"could not load the single-file checkpoint {path!r} with the configs in {config_dir!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return vae, text_encoder, tokenizer, unet


def _load_folder(path: str, dtype: torch.dtype, title: str):
    """(vae, text_encoder, tokenizer, unet) from a diffusers inpainting folder with one text encoder, offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(
            os.path.join(path, "text_encoder"), dtype=dtype, local_files_only=True
        )
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"could not load the {title} folder {path!r}: {type(exc).__name__}: {exc}") from exc
    return vae, text_encoder, tokenizer, unet


def load_xl_components(path: str, dtype: torch.dtype):
    """(vae, text_encoder, text_encoder_2, [tokenizer, tokenizer_2], unet) of a diffusers SDXL-inpainting folder,
    offline; the VAE in float32 (SDXL's overflows in fp16)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    offline = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **offline)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **offline)
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), dtype=dtype, **offline)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(path, "text_encoder_2"), dtype=dtype,
                                                                     **offline)
        tokenizers = [fix_token_length(CLIPTokenizer.from_pretrained(os.path.join(path, sub), **offline))
                      for sub in ("tokenizer", "tokenizer_2")]
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"could not load the SDXL-inpainting folder {path!r}: {type(exc).__name__}: {exc}") from exc
    return vae.eval(), text_encoder.eval(), text_encoder_2.eval(), tokenizers, unet.eval()


def _as_plan(plan_or_path: Union[ModelPlan, str, os.PathLike], config_dir) -> ModelPlan:
    if isinstance(plan_or_path, ModelPlan):
        return plan_or_path
    return plan_models(base_model_path=plan_or_path, use_controlnet=False, config_dir=config_dir)


def scheduler_from(plan: ModelPlan, scheduler: str = DEFAULT_SCHEDULER):
    """A scheduler of kind ``scheduler`` from the plan's ``scheduler/scheduler_config.json``."""
    with open(os.path.join(plan.config_dir, "scheduler", "scheduler_config.json"), encoding="utf-8") as fh:
        return make_scheduler(scheduler, json.load(fh))


def load_components(plan_or_path: Union[ModelPlan, str, os.PathLike], *, dtype: torch.dtype = torch.float32,
                    scheduler: str = DEFAULT_SCHEDULER, config_dir: Optional[str] = None):
    """(vae, text_encoder, tokenizer, unet, scheduler) of a one-text-encoder inpainting model (SD2, SD1.5): the
    plan's (or, given a path, that of :func:`.model_plan.plan_models` of it with ``config_dir``) -- a local
    diffusers folder or SD2's original-layout single file (``512-inpainting-ema.safetensors`` / ``.ckpt``, fp32 or
    fp16; loaded in ``dtype``) with its config folder. Offline."""
    plan = _as_plan(plan_or_path, config_dir)
    if plan.single_file:
        vae, text_encoder, tokenizer, unet = _load_single_file(plan.model_path, plan.config_dir, dtype)
    else:
        vae, text_encoder, tokenizer, unet = _load_folder(plan.model_path, dtype, f"{plan.base.title}")
    fix_token_length(tokenizer)
    return vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), scheduler_from(plan, scheduler)


# ---------------------------------------------------------------------------------------------------------------
# the ControlNet
# ---------------------------------------------------------------------------------------------------------------
# ControlNet settings that ``from_unet`` copies from the UNet and that weights cannot reveal
_UNET_SETTINGS_NOT_IN_WEIGHTS = (
    "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps", "flip_sin_to_cos", "freq_shift",
    "act_fn", "upcast_attention", "resnet_time_scale_shift", "only_cross_attention", "mid_block_scale_factor",
    "downsample_padding", "class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim",
)


def load_controlnet(path: str, *, dtype: torch.dtype = torch.float32, unet=None, base=None):
    """The salient ControlNet from any released form (folder, single file, .pth) as a diffusers ``ControlNetModel``.

    ``unet``: the UNet it will steer. Its cross-attention width is checked, and for a checkpoint without a config
    (the released ``.pth``) its head counts and norm groups are used (the ControlNet is ``from_unet`` of it).
    ``base``: the UNet's inpainting base; a ControlNet of another base is an error naming both."""
    from ..networks.controlnet_checkpoint import build_diffusers_controlnet

    width, settings = 1024, None
    if unet is not None:
        width = unet.config.cross_attention_dim
        settings = {k: unet.config[k] for k in _UNET_SETTINGS_NOT_IN_WEIGHTS if k in unet.config}
    model = build_diffusers_controlnet(os.fspath(path), cross_attention_dim=width, default_config=settings, base=base)
    if dtype != torch.float32:
        model.to(dtype=dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------
def _model_index(folder: str) -> dict:
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        return {}
    with open(index, encoding="utf-8") as fh:
        return json.load(fh)


def _xl_pipeline(plan: ModelPlan, dtype: torch.dtype, scheduler: str):
    from .pipeline_xl import SalientBackgroundXLPipeline

    vae, text_encoder, text_encoder_2, (tokenizer, tokenizer_2), unet = load_xl_components(plan.model_path, dtype)
    controlnet = None
    if plan.uses_controlnet:
        controlnet = load_controlnet(plan.controlnet_path, dtype=dtype, unet=unet, base=plan.base)
    force_zeros = _model_index(plan.model_path).get("force_zeros_for_empty_prompt", True)
    return SalientBackgroundXLPipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet,
                                       scheduler_from(plan, scheduler), controlnet=controlnet,
                                       force_zeros_for_empty_prompt=bool(force_zeros))


def pipeline_from_plan(plan: ModelPlan, *, device: Union[str, torch.device, None] = None,
                       dtype: torch.dtype = torch.float32,
                       scheduler: str = DEFAULT_SCHEDULER) -> SalientBackgroundPipeline:
    """The pipeline of ``plan`` (the SDXL one for an XL base), loaded offline, moved to ``device``."""
    if plan.base.xl_pipeline:
        pipe = _xl_pipeline(plan, dtype, scheduler)
    else:
        vae, text_encoder, tokenizer, unet, sched = load_components(plan, dtype=dtype, scheduler=scheduler)
        controlnet = None
        if plan.uses_controlnet:
            controlnet = load_controlnet(plan.controlnet_path, dtype=dtype, unet=unet, base=plan.base)
        pipe = SalientBackgroundPipeline(vae, text_encoder, tokenizer, unet, sched, controlnet=controlnet)
    if device is not None:
        pipe.to(device)
        if plan.base.xl_pipeline:
            pipe.vae.to(dtype=torch.float32)
    return pipe


def load_pipeline(
    pipeline_path: Optional[str] = None,
    *,
    base_model_path: Optional[str] = None,
    controlnet_path: Optional[str] = None,
    use_controlnet: bool = True,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    scheduler: str = DEFAULT_SCHEDULER,
    config_dir: Optional[str] = None,
    si2_path: Optional[str] = None,
    si2_config: Optional[str] = None,
) -> SalientBackgroundPipeline:
    """Build the pipeline from local files only.

    * ``pipeline_path``: the ``yahoo-inc/photo-background-generation`` layout (the model's sub-folders +
      ``controlnet/``); ``controlnet_path`` overrides its ``controlnet/``.
    * or ``base_model_path`` (a diffusers inpainting folder of SD2, SD1.5 or SDXL, or SD2's single file
      ``512-inpainting-ema.safetensors`` that ComfyUI loads, with its config folder ``config_dir`` or one found beside
      it, see :func:`.model_plan.find_config_dir`) + ``controlnet_path`` (folder, ``.safetensors`` or ``.pth``).
    * ``use_controlnet=False``: the base's plain inpainting (the SI2 baseline on SD2), no ControlNet loaded.

    ``si2_path`` and ``si2_config`` are the former names of ``base_model_path`` and ``config_dir``. Every check
    that needs no weights comes first (:func:`.model_plan.plan_models`); with a plan in hand, call
    :func:`pipeline_from_plan`.
    """
    plan = plan_models(pipeline_path, base_model_path=base_model_path or si2_path, controlnet_path=controlnet_path,
                       use_controlnet=use_controlnet, config_dir=config_dir or si2_config)
    return pipeline_from_plan(plan, device=device, dtype=dtype, scheduler=scheduler)
