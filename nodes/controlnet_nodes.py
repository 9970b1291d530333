"""The salient-aware ControlNet in ComfyUI: loader, inpaint conditioning, framing, restore, paste back.

How the ControlNet gets the inpainting input: an inpainting UNet (SD2, SD1.5 or SDXL inpainting) receives 9
channels -- the 4 noisy latents plus ``c_concat`` (mask + masked-image latents) that ComfyUI's ``BaseModel``
appends. The stock ControlNet only passes the 4 noisy channels to its control model. Our loader converts the
checkpoint to ComfyUI's key layout, loads it with ComfyUI's own ``load_controlnet_state_dict`` (which recognises the
base from the weights as it does for a UNet), gives the control model a ``forward`` that accepts a ``c_concat``
keyword and appends it after x, and wraps it in a stock ``comfy.controlnet.ControlNet`` with
``extra_conds=["y", "c_concat"]`` -- ``get_control`` passes each of those cond entries as a keyword, so SDXL's added
conditioning ``y`` reaches the ControlNet's ``label_emb`` as it reaches the UNet's. So the CONTROL_NET also works
with the stock *Apply ControlNet (Advanced)* node after *InpaintModelConditioning*.

The ControlNet remembers its base (read from its weights). A ControlNet and a sampled model of different bases give
one error naming both: at the conditioning node from the prompts' width, else when sampling starts (``pre_run``
sees ComfyUI's model), else at the first control call from the conditioning it receives.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..models.imaging import framing, image_ops
from ..models.networks.comfy_keys import convert_diffusers_to_comfy
from ..models.imaging.compositing import paste_object_back
from ..models.networks.controlnet_checkpoint import (
    BASE_RECORD,
    FILE_BASE,
    SALIENT_IN_CHANNELS,
    WHERE_TO_GET,
    is_controlnet_folder,
    load_controlnet_state_dict,
)
from ..models.errors import CheckpointError, InputError
from ..models.imaging.framing import FrameRecord
from ..models import bases
from ..models.bases import InpaintingBase, base_mismatch_message, how_to_get_controlnet
from ..models.generation.inpaint_inputs import build_inpaint_inputs, latent_mask
from . import comfy_glue

log = logging.getLogger("salient_background")

CONTROLNET_FOLDER = "controlnet"
GENERATE_CATEGORY = "Salient Background/generate"
FRAMING_CATEGORY = "Salient Background/framing"
# what to load with Load Checkpoint for each base (the published single-file checkpoints; the base table says)
INPAINT_CHECKPOINTS = {name: base.comfy_checkpoint for name, base in bases.BASES.items()}
SDXL_ADM_CHANNELS = bases.SDXL_ADDED_INPUT_WIDTH  # SDXL's y: pooled text embedding (1280) + 6 size/crop time ids x 256


class NotAnInpaintingModelError(InputError):
    """The sampled model does not feed the ControlNet the inpainting channels it needs."""


class BaseMismatchError(InputError):
    """The salient ControlNet and the sampled model (or its prompts) belong to different inpainting bases."""


def inpainting_model_hint(base: Optional[InpaintingBase]) -> str:
    """'Stable Diffusion 1.5 inpainting (sd-v1-5-inpainting.ckpt from ...)': what to load for ``base``."""
    if base is None:
        return "the inpainting model this ControlNet was trained on"
    return f"{base.title} ({INPAINT_CHECKPOINTS.get(base.name, base.diffusers_repo)})"


# ---------------------------------------------------------------------------------------------------------------
# which base the sampled model is
# ---------------------------------------------------------------------------------------------------------------
def base_for_context(width: Optional[int], has_added_conditioning: bool) -> Optional[InpaintingBase]:
    """The base whose text conditioning is ``width`` wide (and has SDXL's added conditioning or not); None if none."""
    for base in bases.BASES.values():
        if base.context_dim == width and (base.added_conditioning is not None) == has_added_conditioning:
            return base
    return None


def base_for_comfy_unet_config(unet_config) -> Optional[InpaintingBase]:
    """The base of a ComfyUI model from its detected ``unet_config`` (context width, ``adm_in_channels``)."""
    width, adm = unet_config.get("context_dim"), unet_config.get("adm_in_channels")
    if adm not in {f.adm_in_channels for f in bases.COMFY_FAMILIES}:  # unCLIP, refiner...: no base of ours has it
        return None
    return base_for_context(int(width) if width else None, adm is not None)


def describe_sampled(base: Optional[InpaintingBase], width: Optional[int], model_class: str = "") -> str:
    what = base.title if base is not None else f"a model with {width}-wide text conditioning"
    return what + (f" (ComfyUI detected {model_class})" if model_class else "")


def check_same_base(controlnet_base: Optional[InpaintingBase], sampled: Optional[InpaintingBase], sampled_text: str,
                    what: str = "the sampled model") -> None:
    """Raise :class:`BaseMismatchError` naming both bases when they differ (unknown ControlNet base: no check); it
    says what to load for the ControlNet, and how to get a ControlNet for the sampled model's base."""
    if controlnet_base is None or sampled is controlnet_base:
        return
    other = (f"for {sampled.title}. {how_to_get_controlnet(sampled)}" if sampled is not None
             else "trained for that model.")
    raise BaseMismatchError(base_mismatch_message(
        controlnet_base, sampled, controlnet="this salient ControlNet", model=what, model_text=sampled_text,
        fix=f"load {inpainting_model_hint(controlnet_base)} with Load Checkpoint (and encode the prompts with its "
            f"CLIP), or use a salient ControlNet {other}"))


# ---------------------------------------------------------------------------------------------------------------
# the control model: ComfyUI's cldm ControlNet whose forward also takes c_concat
# ---------------------------------------------------------------------------------------------------------------
_INPAINT_CLASSES: dict[type, type] = {}


def _check_control_inputs(model, x, context, y, c_concat) -> None:
    """Checked at every control call (cheap): the inpainting channels, then the base the conditioning belongs to."""
    hint = inpainting_model_hint(model.salient_base)
    if c_concat is None:
        raise NotAnInpaintingModelError(
            "The salient ControlNet needs an inpainting model: the model being sampled passes no "
            f"mask/masked-image channels (it is not a 9-channel inpainting model). Load {hint} "
            "with Load Checkpoint and use it for this KSampler."
        )
    need = model.salient_in_channels - x.shape[1]
    if c_concat.shape[1] != need:
        raise NotAnInpaintingModelError(
            f"The salient ControlNet takes {model.salient_in_channels} input channels, but the model being "
            f"sampled gives {x.shape[1]} latent + {c_concat.shape[1]} inpainting channels. Use {hint}."
        )
    width = int(context.shape[-1]) if context is not None else None
    if model.salient_base is not None:
        sampled = base_for_context(width, y is not None and y.shape[-1] == SDXL_ADM_CHANNELS)
        check_same_base(model.salient_base, sampled, describe_sampled(sampled, width),
                        what="the conditioning of the sampled model")
    elif model.salient_context_dim is not None and width is not None and width != model.salient_context_dim:
        raise BaseMismatchError(
            f"The text conditioning is {width} wide but the salient ControlNet needs {model.salient_context_dim}."
        )


def _inpaint_control_class(base: type) -> type:
    """A subclass of ComfyUI's ``cldm.ControlNet`` (``base``) whose ``forward`` appends ``c_concat`` to x."""
    if base in _INPAINT_CLASSES:
        return _INPAINT_CLASSES[base]

    class SalientInpaintControlNet(base):
        salient_inpaint_control = True

        def forward(self, x, hint, timesteps, context, y=None, c_concat=None, **kwargs):
            _check_control_inputs(self, x, context, y, c_concat)
            x = torch.cat([x, c_concat.to(device=x.device, dtype=x.dtype)], dim=1)
            return super().forward(x, hint, timesteps, context, y=y, **kwargs)

    _INPAINT_CLASSES[base] = SalientInpaintControlNet
    return SalientInpaintControlNet


def make_inpaint_control_model(control_model, in_channels: int = SALIENT_IN_CHANNELS, context_dim=None,
                               base: Optional[InpaintingBase] = None):
    """Turn a loaded ComfyUI ``cldm.ControlNet`` into one whose forward accepts ``c_concat`` (in place, same weights).
    ``base``: the inpainting base it was trained on (checked against the sampled model); ``context_dim``: the text
    width to check when the base is unknown (tiny test models)."""
    control_model.__class__ = _inpaint_control_class(type(control_model))
    control_model.salient_in_channels = int(in_channels)
    control_model.salient_base = base
    control_model.salient_context_dim = base.context_dim if base is not None else context_dim
    return control_model


# ---------------------------------------------------------------------------------------------------------------
# the ControlNet wrapper: ComfyUI's stock ControlNet that checks the sampled model's base before sampling
# ---------------------------------------------------------------------------------------------------------------
_WRAPPER_CLASSES: dict[type, type] = {}


def check_sampled_model(control_model, model) -> None:
    """``model``: ComfyUI's BaseModel being sampled (``pre_run``). Same base as the ControlNet, or one clear error."""
    controlnet_base = getattr(control_model, "salient_base", None)
    config = getattr(model, "model_config", None)
    unet_config = getattr(config, "unet_config", None)
    if controlnet_base is None or not isinstance(unet_config, dict):
        return
    sampled = base_for_comfy_unet_config(unet_config)
    check_same_base(controlnet_base, sampled, describe_sampled(sampled, unet_config.get("context_dim"),
                                                                type(config).__name__))


def _salient_wrapper_class(base: type) -> type:
    """A subclass of ComfyUI's ``comfy.controlnet.ControlNet`` (``base``) that checks the sampled model in
    ``pre_run`` and stays itself when copied (ComfyUI's ``copy`` builds a plain ``ControlNet``)."""
    if base in _WRAPPER_CLASSES:
        return _WRAPPER_CLASSES[base]

    class SalientControlNet(base):
        def pre_run(self, model, percent_to_timestep_function):
            check_sampled_model(self.control_model, model)
            super().pre_run(model, percent_to_timestep_function)

        def copy(self):
            c = super().copy()
            c.__class__ = type(self)
            return c

    _WRAPPER_CLASSES[base] = SalientControlNet
    return SalientControlNet


def is_salient_controlnet(control_net) -> bool:
    return bool(getattr(getattr(control_net, "control_model", None), "salient_inpaint_control", False))


def controlnet_base_of(control_net) -> Optional[InpaintingBase]:
    return getattr(getattr(control_net, "control_model", None), "salient_base", None)


def describe_controlnet_base(base: Optional[InpaintingBase], context_dim: Optional[int] = None) -> str:
    """What the loader node shows: the base the ControlNet is for and what to sample it with."""
    if base is None:
        return f"salient ControlNet of no known base ({context_dim}-wide text conditioning)"
    return (f"salient ControlNet for {base.title} ({base.name}): sample it with {inpainting_model_hint(base)} at "
            f"{base.resolution} px")


def load_salient_controlnet(path: str, cross_attention_dim=FILE_BASE):
    """Any accepted checkpoint form -> a stock ComfyUI ``ControlNet`` whose control model receives the concat.

    The ControlNet remembers the base (SD2, SD1.5 or SDXL inpainting) the file is for (recorded by our export, else
    read from its weights). ``cross_attention_dim``: a width to check instead (tests' tiny models, of no real base)."""
    state_dict, config = load_controlnet_state_dict(path, cross_attention_dim=cross_attention_dim)
    recorded = config.get(BASE_RECORD) if cross_attention_dim is FILE_BASE else None
    base = bases.get_base(recorded) if recorded else None
    comfy_sd = convert_diffusers_to_comfy(state_dict)
    loaded = comfy_glue.comfy_load_controlnet_state_dict(comfy_sd)
    control_model = getattr(loaded, "control_model", None)
    if control_model is None or not isinstance(control_model, comfy_glue.cldm_controlnet_class()):
        raise CheckpointError(f"ComfyUI did not load {path!r} as a ControlNet (got {type(loaded).__name__}). {WHERE_TO_GET}")
    width = config.get("cross_attention_dim")
    make_inpaint_control_model(control_model, int(state_dict["conv_in.weight"].shape[1]), int(width) if width else None,
                               base=base)
    control_net = comfy_glue.comfy_controlnet(control_model, like=loaded, extra_conds=["y", "c_concat"])
    control_net.__class__ = _salient_wrapper_class(type(control_net))
    return control_net


# ---------------------------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------------------------
def controlnet_choices() -> list[str]:
    files = comfy_glue.list_model_files(CONTROLNET_FOLDER)
    dirs = comfy_glue.list_model_dirs(CONTROLNET_FOLDER, is_controlnet_folder)
    return sorted(set(files) | set(dirs))


class LoadSalientControlNet:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "controlnet": (controlnet_choices(), {
                    "tooltip": "From models/controlnet: a diffusers folder (config.json + weights, e.g. the 'controlnet' "
                               "folder of yahoo-inc/photo-background-generation), a single .safetensors with diffusers "
                               "keys, or controlnet_inpainting_salient_aware.pth."}),
            }
        }

    RETURN_TYPES = ("CONTROL_NET", "STRING")
    RETURN_NAMES = ("control_net", "base")
    OUTPUT_TOOLTIPS = ("", "Which inpainting base the ControlNet is for (recorded by our export, else read from its "
                           "weights) and what to sample it with; also shown on the node once it has run.")
    FUNCTION = "load"
    CATEGORY = GENERATE_CATEGORY
    DESCRIPTION = ("Loads the salient-aware ControlNet (9-channel; for SD2, SD1.5 or SDXL inpainting, read from its "
                   "weights) so that it receives the inpainting mask and masked-image latents like the UNet. Works "
                   "with Salient ControlNet Conditioning and with the stock Apply ControlNet (Advanced). The 'base' "
                   "output says which base it read, before anything is sampled.")

    @classmethod
    def VALIDATE_INPUTS(cls, controlnet):
        return comfy_glue.validate_model_choice(lambda: cls.resolve(controlnet))

    @staticmethod
    def resolve(controlnet: str) -> str:
        """A diffusers folder in models/controlnet, else a weight file (missing -> per base: the download command of
        the published one, the training command for the others)."""
        path = comfy_glue.resolve_model_dir(CONTROLNET_FOLDER, controlnet)
        if path is None or not is_controlnet_folder(path):
            path = comfy_glue.resolve_model_file(CONTROLNET_FOLDER, controlnet, where_to_get=WHERE_TO_GET)
        return path

    def load(self, controlnet: str):
        control_net = load_salient_controlnet(self.resolve(controlnet))
        model = control_net.control_model
        text = describe_controlnet_base(model.salient_base, model.salient_context_dim)
        log.info("Load Salient ControlNet %s: %s", controlnet, text)
        return {"ui": {"text": [text]}, "result": (control_net, text)}


class SalientControlNetConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "control_net": ("CONTROL_NET", {"tooltip": "From Load Salient ControlNet."}),
                "vae": ("VAE",),
                "image": ("IMAGE", {"tooltip": "The photo, framed to the base's square: 512 for SD2 and SD1.5 "
                                               "inpainting, 1024 for SDXL inpainting."}),
                "object_mask": ("MASK", {"tooltip": "1 = the object to keep (soft or binary). Inverted inside this node."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "ControlNet scale. 1.0 = the paper; 0 = plain inpainting (the baseline)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            },
            "optional": {
                "noise_mask": ("BOOLEAN", {"default": False,
                                           "tooltip": "Off (the paper): the whole image is regenerated, the object passes "
                                                      "through the VAE. On: the sampler keeps the object's latent."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "apply"
    CATEGORY = GENERATE_CATEGORY
    DESCRIPTION = ("Inpainting conditioning for the salient ControlNet as the paper builds it: inverted binarised mask "
                   "and masked image (background mid-grey) for the UNet and the ControlNet, soft inverted mask as the "
                   "hint. Connect the inpainting model the ControlNet was trained for (SD2 512-inpainting-ema, SD1.5 "
                   "or SDXL inpainting) to the KSampler.")

    def apply(self, positive, negative, control_net, vae, image, object_mask, strength=1.0, start_percent=0.0,
              end_percent=1.0, noise_mask=False):
        comfy_glue.refuse_nan(strength=strength, start_percent=start_percent, end_percent=end_percent)
        if not is_salient_controlnet(control_net):
            raise InputError(
                "control_net is not the salient ControlNet: load it with 'Load Salient ControlNet' (the stock loader "
                "cannot feed it the inpainting channels)."
            )
        if start_percent > end_percent:
            raise InputError(f"start_percent {start_percent} is after end_percent {end_percent}")
        check_prompts_base(control_net, positive)
        images = image_ops.as_rgb_images(image, what="image")
        masks = image_ops.match_mask_to_images(object_mask, images, what="object_mask")
        ratio = getattr(vae, "downscale_ratio", 8)
        ratio = ratio if isinstance(ratio, int) else 8
        images, masks = framing.crop_to_multiple(images, masks, ratio)
        inputs = build_inpaint_inputs(images, masks, layout="BHWC")
        concat_latent = vae.encode(inputs.masked_image_bhwc01())
        orig_latent = vae.encode(images)
        lat_h, lat_w = concat_latent.shape[-2], concat_latent.shape[-1]
        # the mask at latent size exactly as the reference makes it (nearest); BaseModel then uses it as is
        concat_mask = latent_mask(inputs.repaint_mask, lat_h, lat_w)
        values = {"concat_latent_image": concat_latent, "concat_mask": concat_mask}
        positive = comfy_glue.conditioning_set_values(positive, values)
        negative = comfy_glue.conditioning_set_values(negative, values)
        positive, negative = comfy_glue.apply_controlnet_advanced(
            positive, negative, control_net, inputs.hint_bhwc(), strength, start_percent, end_percent, vae=None
        )
        latent = {"samples": orig_latent}
        if noise_mask:
            latent["noise_mask"] = inputs.repaint_mask
        return (positive, negative, latent)


def check_prompts_base(control_net, conditioning) -> None:
    """The prompts' text encoder gives away the sampled model's base (768 wide: SD1.5, 1024: SD2, 2048 + pooled
    output: SDXL): a mismatch with the ControlNet's base is reported here, before anything is encoded."""
    if not conditioning:
        return
    width = int(conditioning[0][0].shape[-1])
    # every CLIP gives a pooled output; only SDXL's model turns it into added conditioning, and only SDXL is 2048 wide
    added = any(b.added_conditioning is not None and b.context_dim == width for b in bases.BASES.values())
    sampled = base_for_context(width, added)
    check_same_base(controlnet_base_of(control_net), sampled, describe_sampled(sampled, width),
                    what="the prompts' text encoder (from the Load Checkpoint feeding CLIP Text Encode)")


FRAME_MODES = ["letterbox", "crop around object"]
FRAME_NODE_NAME = "Frame for Inpainting Model"  # shown in ComfyUI; 512 px for SD2 / SD1.5, 1024 for SDXL
_FRAMING_MODE = {"letterbox": framing.FIT, "crop around object": framing.CROP}


class FrameForInpainting:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "mode": (FRAME_MODES, {"default": "letterbox",
                                       "tooltip": "letterbox = the paper: the whole photo fitted in the square, centred, "
                                                  "black padding. crop around object = a square around the object with a margin."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                 "tooltip": "Side of the square canvas: 512 for SD2 and SD1.5 inpainting, 1024 for "
                                            "SDXL inpainting (the sizes they were trained at)."}),
                "upscale_small": ("BOOLEAN", {"default": False,
                                              "tooltip": "Enlarge photos smaller than the canvas (the paper only shrinks; "
                                                         "small photos then fill only part of the canvas)."}),
                "margin": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 4.0, "step": 0.05,
                                     "tooltip": "crop around object: space around the object's box, as a fraction of its longer side."}),
            },
            "optional": {"object_mask": ("MASK", {"tooltip": "1 = object. Needed for 'crop around object'; framed alongside."})},
        }

    RETURN_TYPES = ("IMAGE", "MASK", "SALIENT_FRAME")
    RETURN_NAMES = ("image", "object_mask", "frame")
    FUNCTION = "frame"
    CATEGORY = FRAMING_CATEGORY
    DESCRIPTION = ("Fits the photo (and its object mask) into the inpainting model's square canvas (512 for SD2/SD1.5, "
                   "1024 for SDXL) and remembers how, for Restore Frame. (Its node id keeps its first name, "
                   "SalientBG_FrameForSD2.)")

    def frame(self, image, mode="letterbox", size=512, upscale_small=False, margin=0.25, object_mask=None):
        comfy_glue.refuse_nan(margin=margin)
        if mode not in _FRAMING_MODE:
            raise InputError(f"unknown mode {mode!r}; one of {FRAME_MODES}")
        if mode == "crop around object" and object_mask is None:
            raise InputError("'crop around object' needs the object_mask input")
        images = image_ops.as_rgb_images(image, what="image")
        masks = None if object_mask is None else image_ops.match_mask_to_images(object_mask, images, what="object_mask")
        out_images, out_masks, record = framing.frame_batch(
            images, masks, _FRAMING_MODE[mode], size, allow_upscale=upscale_small, margin=margin)
        if masks is not None:
            for i in range(out_masks.shape[0]):
                warning = framing.small_object_warning(out_masks[i])
                if warning:
                    log.warning("%s, item %d: %s", FRAME_NODE_NAME, i, warning)
        return (out_images, out_masks, record)


class RestoreFrame:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The generated image, at the framed size."}),
                "frame": ("SALIENT_FRAME",),
            },
            "optional": {
                "original_image": ("IMAGE", {"tooltip": "Fills what lies outside the framed area (crop mode); "
                                                        "without it that area is black."}),
                "mask": ("MASK", {"tooltip": "A mask at the framed size to map back too."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "restore"
    CATEGORY = FRAMING_CATEGORY
    DESCRIPTION = ("Maps a framed result back to the original size and position (padding dropped). The mask output is "
                   "the given mask mapped back, or else where the frame covered the original.")

    def restore(self, image, frame, original_image=None, mask=None):
        if not isinstance(frame, FrameRecord):
            raise InputError(f"frame must come from a {FRAME_NODE_NAME} node")
        images = image_ops.as_rgb_images(image, what="image")
        b = images.shape[0]
        if len(frame.transforms) > 1 and len(frame.transforms) != b:
            raise InputError(f"the frame holds {len(frame.transforms)} items but the image batch is {b}")
        originals = None
        if original_image is not None:
            originals = image_ops.as_rgb_images(original_image, what="original_image")
            if originals.shape[0] not in (1, b):
                raise InputError(f"original_image batch {originals.shape[0]} does not match the image batch {b}")
        masks = None
        if mask is not None:
            masks = image_ops.as_mask_batch(mask, what="mask")
            if masks.shape[0] not in (1, b):
                raise InputError(f"mask batch {masks.shape[0]} does not match the image batch {b}")
        out_images, out_masks = [], []
        for i in range(b):
            t = frame.for_item(i)
            orig = None if originals is None else originals[min(i, originals.shape[0] - 1)][None]
            out_images.append(framing.restore(images[i:i + 1], t, original=orig))
            if masks is not None:
                out_masks.append(framing.restore(masks[min(i, masks.shape[0] - 1)][None], t, mode="bilinear"))
            else:
                out_masks.append(framing.crop_region_mask(t)[None])
        shapes = {tuple(x.shape[1:3]) for x in out_images}
        if len(shapes) > 1:
            raise InputError(f"the batch items came from originals of different sizes {sorted(shapes)}; restore them one by one")
        return (torch.cat(out_images), torch.cat(out_masks))


class PasteObjectBack:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The generated image, at the original's size."}),
                "original_image": ("IMAGE",),
                "object_mask": ("MASK", {"tooltip": "1 = object (binarised at 0.5)."}),
                "erode": ("INT", {"default": 2, "min": 0, "max": 64,
                                  "tooltip": "Shrink the pasted area by this many pixels, so no old background returns."}),
                "feather": ("INT", {"default": 4, "min": 0, "max": 64, "tooltip": "Width of the soft seam, in pixels."}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "paste"
    CATEGORY = FRAMING_CATEGORY
    DESCRIPTION = "Composites the original object over the generated image with an eroded, feathered seam (optional; the paper does not)."

    def paste(self, image, original_image, object_mask, erode=2, feather=4):
        images = image_ops.as_rgb_images(image, what="image")
        originals = image_ops.as_rgb_images(original_image, what="original_image")
        masks = image_ops.as_mask_batch(object_mask, what="object_mask")
        return (paste_object_back(images, originals, masks, erode, feather),)


NODE_CLASS_MAPPINGS = {
    "SalientBG_ControlNetLoader": LoadSalientControlNet,
    "SalientBG_ControlNetConditioning": SalientControlNetConditioning,
    "SalientBG_FrameForSD2": FrameForInpainting,  # the id keeps the name it was published with
    "SalientBG_RestoreFrame": RestoreFrame,
    "SalientBG_PasteObjectBack": PasteObjectBack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SalientBG_ControlNetLoader": "Load Salient ControlNet",
    "SalientBG_ControlNetConditioning": "Salient ControlNet Conditioning",
    "SalientBG_FrameForSD2": FRAME_NODE_NAME,
    "SalientBG_RestoreFrame": "Restore Frame",
    "SalientBG_PasteObjectBack": "Paste Object Back",
}
