"""The salient-aware ControlNet in ComfyUI: loader, inpaint conditioning, framing for SD2, restore, paste back.

How the ControlNet gets the inpainting input: SD2 inpainting's UNet receives 9 channels -- the 4 noisy
latents plus ``c_concat`` (mask + masked-image latents) that ComfyUI's ``BaseModel`` appends. The stock ControlNet
only passes the 4 noisy channels to its control model. Our loader converts the checkpoint to ComfyUI's key layout,
loads it with ComfyUI's own ``load_controlnet_state_dict``, gives the control model a ``forward`` that accepts a
``c_concat`` keyword and appends it after x, and wraps it in a stock ``comfy.controlnet.ControlNet`` with
``extra_conds=["y", "c_concat"]`` -- ``get_control`` passes each of those cond entries as a keyword. So the
CONTROL_NET also works with the stock *Apply ControlNet (Advanced)* node after *InpaintModelConditioning*.
"""
from __future__ import annotations

import logging

import torch

from ..models.imaging import framing, image_ops
from ..models.networks.comfy_keys import convert_diffusers_to_comfy
from ..models.imaging.compositing import paste_object_back
from ..models.networks.controlnet_checkpoint import (
    SALIENT_IN_CHANNELS,
    SD2_CROSS_ATTENTION_DIM,
    WHERE_TO_GET,
    is_controlnet_folder,
    load_controlnet_state_dict,
)
from ..models.errors import CheckpointError, InputError
from ..models.imaging.framing import FrameRecord
from ..models.generation.inpaint_inputs import build_inpaint_inputs, latent_mask
from . import comfy_glue

log = logging.getLogger("salient_background")

CONTROLNET_FOLDER = "controlnet"
GENERATE_CATEGORY = "Salient Background/generate"
FRAMING_CATEGORY = "Salient Background/framing"
SD2_INPAINT_MODEL = "Stable Diffusion 2 inpainting, 512-inpainting-ema.safetensors (stabilityai/stable-diffusion-2-inpainting)"


class NotAnInpaintingModelError(InputError):
    """The sampled model does not feed the ControlNet the inpainting channels it needs."""


# ---------------------------------------------------------------------------------------------------------------
# the control model: ComfyUI's cldm ControlNet whose forward also takes c_concat
# ---------------------------------------------------------------------------------------------------------------
_INPAINT_CLASSES: dict[type, type] = {}


def _inpaint_control_class(base: type) -> type:
    """A subclass of ComfyUI's ``cldm.ControlNet`` (``base``) whose ``forward`` appends ``c_concat`` to x."""
    if base in _INPAINT_CLASSES:
        return _INPAINT_CLASSES[base]

    class SalientInpaintControlNet(base):
        salient_inpaint_control = True

        def forward(self, x, hint, timesteps, context, y=None, c_concat=None, **kwargs):
            need = self.salient_in_channels - x.shape[1]
            if c_concat is None:
                raise NotAnInpaintingModelError(
                    "The salient ControlNet needs an inpainting model: the model being sampled passes no "
                    f"mask/masked-image channels (it is not a 9-channel inpainting model). Load {SD2_INPAINT_MODEL} "
                    "with Load Checkpoint and use it for this KSampler."
                )
            if c_concat.shape[1] != need:
                raise NotAnInpaintingModelError(
                    f"The salient ControlNet takes {self.salient_in_channels} input channels, but the model being "
                    f"sampled gives {x.shape[1]} latent + {c_concat.shape[1]} inpainting channels. Use {SD2_INPAINT_MODEL}."
                )
            width = self.salient_context_dim
            if width is not None and context is not None and context.shape[-1] != width:
                raise NotAnInpaintingModelError(
                    f"The text conditioning is {context.shape[-1]} wide but the salient ControlNet needs {width} "
                    f"(SD2's OpenCLIP ViT-H): encode the prompts with the CLIP of {SD2_INPAINT_MODEL}."
                )
            x = torch.cat([x, c_concat.to(device=x.device, dtype=x.dtype)], dim=1)
            return super().forward(x, hint, timesteps, context, y=y, **kwargs)

    _INPAINT_CLASSES[base] = SalientInpaintControlNet
    return SalientInpaintControlNet


def make_inpaint_control_model(control_model, in_channels: int = SALIENT_IN_CHANNELS, context_dim=SD2_CROSS_ATTENTION_DIM):
    """Turn a loaded ComfyUI ``cldm.ControlNet`` into one whose forward accepts ``c_concat`` (in place, same weights)."""
    control_model.__class__ = _inpaint_control_class(type(control_model))
    control_model.salient_in_channels = int(in_channels)
    control_model.salient_context_dim = context_dim
    return control_model


def is_salient_controlnet(control_net) -> bool:
    return bool(getattr(getattr(control_net, "control_model", None), "salient_inpaint_control", False))


def load_salient_controlnet(path: str, cross_attention_dim=SD2_CROSS_ATTENTION_DIM):
    """Any accepted checkpoint form -> a stock ComfyUI ``ControlNet`` whose control model receives the concat."""
    state_dict, config = load_controlnet_state_dict(path, cross_attention_dim=cross_attention_dim)
    comfy_sd = convert_diffusers_to_comfy(state_dict)
    loaded = comfy_glue.comfy_load_controlnet_state_dict(comfy_sd)
    control_model = getattr(loaded, "control_model", None)
    if control_model is None or not isinstance(control_model, comfy_glue.cldm_controlnet_class()):
        raise CheckpointError(f"ComfyUI did not load {path!r} as a ControlNet (got {type(loaded).__name__}). {WHERE_TO_GET}")
    width = config.get("cross_attention_dim")
    make_inpaint_control_model(control_model, int(state_dict["conv_in.weight"].shape[1]), int(width) if width else None)
    return comfy_glue.comfy_controlnet(control_model, like=loaded, extra_conds=["y", "c_concat"])


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

    RETURN_TYPES = ("CONTROL_NET",)
    RETURN_NAMES = ("control_net",)
    FUNCTION = "load"
    CATEGORY = GENERATE_CATEGORY
    DESCRIPTION = ("Loads the salient-aware ControlNet (9-channel, SD2 inpainting) so that it receives the inpainting "
                   "mask and masked-image latents like the UNet. Works with Salient ControlNet Conditioning and with "
                   "the stock Apply ControlNet (Advanced).")

    @classmethod
    def VALIDATE_INPUTS(cls, controlnet):
        return comfy_glue.validate_model_choice(lambda: cls.resolve(controlnet))

    @staticmethod
    def resolve(controlnet: str) -> str:
        """A diffusers folder in models/controlnet, else a weight file (missing -> the download command)."""
        path = comfy_glue.resolve_model_dir(CONTROLNET_FOLDER, controlnet)
        if path is None or not is_controlnet_folder(path):
            path = comfy_glue.resolve_model_file(CONTROLNET_FOLDER, controlnet, where_to_get=WHERE_TO_GET)
        return path

    def load(self, controlnet: str):
        return (load_salient_controlnet(self.resolve(controlnet)),)


class SalientControlNetConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "control_net": ("CONTROL_NET", {"tooltip": "From Load Salient ControlNet."}),
                "vae": ("VAE",),
                "image": ("IMAGE", {"tooltip": "The photo (framed for SD2, e.g. 512x512)."}),
                "object_mask": ("MASK", {"tooltip": "1 = the object to keep (soft or binary). Inverted inside this node."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "ControlNet scale. 1.0 = the paper; 0 = plain SD2 inpainting (baseline)."}),
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
                   "hint. Connect an SD2 inpainting model (512-inpainting-ema) to the KSampler.")

    def apply(self, positive, negative, control_net, vae, image, object_mask, strength=1.0, start_percent=0.0,
              end_percent=1.0, noise_mask=False):
        if not is_salient_controlnet(control_net):
            raise InputError(
                "control_net is not the salient ControlNet: load it with 'Load Salient ControlNet' (the stock loader "
                "cannot feed it the inpainting channels)."
            )
        if start_percent > end_percent:
            raise InputError(f"start_percent {start_percent} is after end_percent {end_percent}")
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


FRAME_MODES = ["letterbox", "crop around object"]
_FRAMING_MODE = {"letterbox": framing.FIT, "crop around object": framing.CROP}


class FrameForSD2:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "mode": (FRAME_MODES, {"default": "letterbox",
                                       "tooltip": "letterbox = the paper: the whole photo fitted in the square, centred, "
                                                  "black padding. crop around object = a square around the object with a margin."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                 "tooltip": "Side of the square canvas; SD2 inpainting was trained at 512."}),
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
    DESCRIPTION = "Fits the photo (and its object mask) into SD2's square canvas and remembers how, for Restore Frame."

    def frame(self, image, mode="letterbox", size=512, upscale_small=False, margin=0.25, object_mask=None):
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
                    log.warning("Frame for SD2, item %d: %s", i, warning)
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
            raise InputError("frame must come from a Frame for SD2 node")
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
    "SalientBG_FrameForSD2": FrameForSD2,
    "SalientBG_RestoreFrame": RestoreFrame,
    "SalientBG_PasteObjectBack": PasteObjectBack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SalientBG_ControlNetLoader": "Load Salient ControlNet",
    "SalientBG_ControlNetConditioning": "Salient ControlNet Conditioning",
    "SalientBG_FrameForSD2": "Frame for SD2",
    "SalientBG_RestoreFrame": "Restore Frame",
    "SalientBG_PasteObjectBack": "Paste Object Back",
}
