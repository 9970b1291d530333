"""Salient-object nodes: load InSPyReNet, and turn an IMAGE batch into an ``object_mask`` (1 = object)."""
from __future__ import annotations

import logging

import torch

from ..models.imaging import image_ops
from ..models.model_files.model_cache import ModelCache
from ..models.precision import PRECISIONS, resolve_dtype
from ..models.networks.salient import OFFICIAL_FILES_HINT, RESIZE_POLICIES
from . import comfy_glue

log = logging.getLogger("salient_background")

SALIENT_FOLDER = "salient"
SALIENT_WHERE_TO_GET = OFFICIAL_FILES_HINT  # from the model registry, the one source of that hint


class SalientModel:
    """What travels on a SALIENT_MODEL socket: the segmenter plus its ComfyUI wrapper for offloading."""

    def __init__(self, segmenter, wrapped, source: str):
        self.segmenter = segmenter
        self.wrapped = wrapped  # ModelPatcher inside ComfyUI, the bare network outside
        self.source = source

    def predict(self, images: torch.Tensor, resize: str = "auto", batch_size: int | None = None, progress=None):
        comfy_glue.load_on_device(self.wrapped)
        return self.segmenter.predict(images, resize=resize, batch_size=batch_size, progress=progress)


# Loaded models survive graph edits; a replaced file is reloaded.
_MODELS: ModelCache[SalientModel] = ModelCache(size=2, name="salient")


def load_salient_model_cached(path: str, mode: str, precision: str) -> SalientModel:
    from ..models.networks.salient import load_salient_model

    device = comfy_glue.torch_device()
    dtype = resolve_dtype(precision, device)

    def load() -> SalientModel:
        segmenter = load_salient_model(path, mode=mode, device=torch.device("cpu"), dtype=dtype)
        return SalientModel(segmenter, comfy_glue.wrap_for_offload(segmenter.network), path)

    return _MODELS.get(path, (mode, dtype, str(device)), load)


class LoadSalientModel:
    """Loads an InSPyReNet (Swin-B) checkpoint from the ``salient`` model folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (comfy_glue.list_model_files(SALIENT_FOLDER), {
                    "tooltip": "InSPyReNet checkpoint from models/salient: ckpt_base.pth (base) or ckpt_fast.pth (fast)."}),
                "mode": (["base", "fast"], {
                    "default": "base",
                    "tooltip": "base = the paper's setting (network base size 1024); fast = base size 384. "
                               "Must match the checkpoint: ckpt_base.pth -> base, ckpt_fast.pth -> fast."}),
                "precision": (PRECISIONS, {"default": "auto", "tooltip": "auto = fp16 on CUDA, fp32 otherwise."}),
            }
        }

    RETURN_TYPES = ("SALIENT_MODEL",)
    RETURN_NAMES = ("salient_model",)
    FUNCTION = "load"
    CATEGORY = "Salient Background/salient"
    DESCRIPTION = "Loads the InSPyReNet salient-object network used by the paper (via transparent-background)."

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint):
        return comfy_glue.validate_model_choice(lambda: cls.resolve(checkpoint))

    @staticmethod
    def resolve(checkpoint: str) -> str:
        return comfy_glue.resolve_model_file(SALIENT_FOLDER, checkpoint, where_to_get=SALIENT_WHERE_TO_GET)

    def load(self, checkpoint: str, mode: str = "base", precision: str = "auto"):
        return (load_salient_model_cached(self.resolve(checkpoint), mode, precision),)


class SalientMask:
    """IMAGE batch -> object_mask (1 = object), a cut-out on neutral grey, its background mask, a preview."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "salient_model": ("SALIENT_MODEL",),
                "image": ("IMAGE",),
                "resize": (list(RESIZE_POLICIES), {
                    "default": "auto",
                    "tooltip": "auto = what transparent-background 1.2.12 (the paper's pin) does per mode: base resizes "
                               "dynamically (short side capped at 1280, sides rounded to multiples of 32), fast resizes "
                               "to 384x384. dynamic/static force one policy (static at base size = 1.3.x)."}),
                "mask_type": (["soft", "binary"], {
                    "default": "soft", "tooltip": "soft = the network's map in 0..1 (the paper's hint); binary = >= 0.5."}),
            },
            "optional": {
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64,
                                       "tooltip": "Images per forward pass (more is faster per image, needs more memory)."}),
            },
        }

    RETURN_TYPES = ("MASK", "IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("object_mask", "cutout", "background_mask", "preview")
    OUTPUT_TOOLTIPS = (
        "1 = salient object, 0 = background (soft or binary).",
        "The object on neutral grey (RGB). For a transparent PNG join it with background_mask in JoinImageWithAlpha.",
        "1 = background: the polarity JoinImageWithAlpha expects for transparency (it uses 1 - mask as alpha).",
        "The photo with the object tinted, to check the mask.",
    )
    FUNCTION = "segment"
    CATEGORY = "Salient Background/salient"
    DESCRIPTION = "Finds the salient object in each image (InSPyReNet). An image with no salient object gets an empty mask and a warning."

    def segment(self, salient_model: SalientModel, image: torch.Tensor, resize: str = "auto",
                mask_type: str = "soft", batch_size: int = 4):
        images = image_ops.as_rgb_images(image)
        progress = comfy_glue.Progress(images.shape[0])
        done_so_far = [0]

        def on_chunk(done: int, total: int) -> None:  # called between forward passes; may raise to interrupt
            progress.update(done - done_so_far[0])
            done_so_far[0] = done

        progress.check_interrupt()
        # the segmenter logs a warning for each image without a salient object (its mask is empty)
        object_mask = salient_model.predict(images, resize, batch_size, on_chunk).maps.float().cpu()
        if mask_type == "binary":
            object_mask = (object_mask >= 0.5).float()
        out_device = comfy_glue.intermediate_device()
        images = images.cpu()
        cutout = image_ops.composite_on_colour(images, object_mask)
        preview = image_ops.overlay_mask(images, object_mask)
        return (object_mask.to(out_device), cutout.to(out_device), (1.0 - object_mask).to(out_device), preview.to(out_device))


NODE_CLASS_MAPPINGS = {
    "SalientBG_LoadSalientModel": LoadSalientModel,
    "SalientBG_SalientMask": SalientMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SalientBG_LoadSalientModel": "Load Salient Model (InSPyReNet)",
    "SalientBG_SalientMask": "Salient Object Mask",
}
