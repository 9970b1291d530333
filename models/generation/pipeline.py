"""Standalone diffusers pipeline: an inpainting model (SD2 inpainting, "SI2" in the paper; SD1.5; SDXL in
:mod:`.pipeline_xl`) + the salient-aware ControlNet.

The stock diffusers ControlNet-inpaint pipeline feeds the ControlNet only the 4 noisy latent channels and therefore
fails on this checkpoint. Here, as in the reference (yahoo/photo-background-generation,
``pipeline_controlnet_inpaint.py``), the ControlNet receives **the same 9-channel tensor the UNet receives** (noisy
latents, repaint mask, masked-image latents) and the hint is the soft inverted object mask. The per-step
tensors come from :func:`models.generation.inpaint_inputs.build_inpaint_inputs`, the one place the ComfyUI node
uses too.

Reference defaults: UniPC, 20 steps, CFG 7.5, ControlNet scale **1.0** (the reference pipeline's own default of 0.5
is wrong for this model), nothing pasted back (the object passes through the VAE). ``controlnet_conditioning_scale=0``
(or no ControlNet at all) is the SI2 baseline; the ControlNet is then not run (adding zero residuals is exact).

Work the reference repeats is done once: the ControlNet embeds its hint (which is the same at every step) at the
first step only (:func:`hint_embedded_once`; bitwise the same result), and the prompts and negative prompts go through
the text encoder as one batch. The convolutions over few positions (the deepest levels of the ControlNet and of the
UNet) run as one matrix product each (:mod:`.small_convolutions`: oneDNN would rearrange their large weights at every
step; the same convolution within float rounding).

Random numbers are drawn as the reference draws them -- the initial noise first, then the VAE posterior sample of the
masked image, from the same generator(s) -- so the same seed gives the same image as the reference pipeline
(tests/golden/pipeline_parity.npz pins that, measured max difference in the test module's docstring).

Loading the models from files is :mod:`.loading`'s job (:func:`models.generation.loading.load_pipeline`), after the
checks of :mod:`.model_plan`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..bases import BASES
from ..errors import CheckpointError, InputError
from .inpaint_inputs import build_inpaint_inputs, latent_mask
from .small_convolutions import small_convolutions_as_matmul

log = logging.getLogger("salient_background")

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
DEFAULT_CONTROLNET_SCALE = 1.0
DEFAULT_SCHEDULER = "unipc"
SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}

# what to use when the UNet is no inpainting one (SD2's single file is the paper's model)
INPAINTING_MODELS = ", ".join(b.title + (" (512-inpainting-ema)" if b.single_file else "") for b in BASES.values())

ImageInput = Union[torch.Tensor, np.ndarray, "PIL.Image.Image", Sequence["PIL.Image.Image"]]


@dataclass
class SalientBackgroundOutput:
    """``images``: the generated pictures (numpy [B,H,W,3] float in [0,1], a torch tensor in the same layout, or PIL
    images, after ``output_type``); ``repaint_mask``: [B,H,W] {0,1}, 1 where the background was generated."""

    images: object
    repaint_mask: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# input coercion
# ---------------------------------------------------------------------------------------------------------------
def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def as_image_batch(image: ImageInput) -> torch.Tensor:
    """PIL image(s), numpy ([H,W,C] / [B,H,W,C], uint8 or float in [0,1]) or a torch IMAGE -> float32 [B,H,W,3]."""
    from ..imaging.image_ops import as_rgb_images

    if _is_pil(image):
        image = [image]
    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("no images given")
        if all(_is_pil(im) for im in image):
            sizes = {im.size for im in image}
            if len(sizes) > 1:
                raise InputError(f"images in one batch must have the same size, got {sorted(sizes)} (WxH); frame them first")
            arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in image]
            return torch.from_numpy(np.stack(arrays))
        image = torch.stack([as_image_batch(im)[0] for im in image])
    if isinstance(image, np.ndarray):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32) / scale)
    return as_rgb_images(image, what="image")


def as_mask_batch(mask) -> torch.Tensor:
    """PIL L image(s), numpy ([H,W] / [B,H,W], uint8 or float) or a torch MASK -> float32 [B,H,W] in [0,1]."""
    from ..imaging.image_ops import as_mask_batch as _as_mask

    if _is_pil(mask):
        mask = [mask]
    if isinstance(mask, (list, tuple)):
        if not mask:
            raise InputError("no masks given")
        if all(_is_pil(m) for m in mask):
            return torch.from_numpy(np.stack([np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in mask]))
        mask = torch.stack([as_mask_batch(m)[0] for m in mask])
    if isinstance(mask, np.ndarray):
        scale = 255.0 if mask.dtype == np.uint8 else 1.0
        mask = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32) / scale)
    return _as_mask(mask, what="object_mask")


def _as_list(value, n: int, what: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise InputError(f"got {len(value)} {what}s for a batch of {n}; give one, or one per image")
    return value


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------
def _diffusion_pipeline_base():
    from diffusers import DiffusionPipeline

    from ..library_progress import apply_library_progress_setting

    apply_library_progress_setting()  # diffusers was just imported: --no-progress reaches its bars too
    return DiffusionPipeline


class SalientBackgroundPipeline(_diffusion_pipeline_base()):
    """An inpainting model + salient ControlNet (``controlnet`` may be None: the base's plain inpainting, the SI2
    baseline on SD2).

    Call it with framed photos (height and width multiples of 8; see :mod:`models.imaging.framing`), their ``object_mask``
    (1 = object) and prompts. See the module docstring for what the networks receive.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, controlnet=None):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, controlnet=controlnet
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        check_components(unet, controlnet)

    # -- text ------------------------------------------------------------------------------------------------
    def _embed(self, texts: list[str], max_length: int, device) -> torch.Tensor:
        from .text_encoding import encode_texts

        return encode_texts(self.tokenizer, self.text_encoder, texts, device, max_length)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], negative_prompts: list[str], device, do_cfg: bool) -> torch.Tensor:
        """[B,77,D] text embeddings, with the negative ones first when ``do_cfg`` ([2B,77,D]), as the reference.
        Negatives and prompts go through the text encoder as one batch (the reference encodes them in two calls:
        the same embeddings within float rounding, for one pass over the encoder's weights instead of two)."""
        from .text_encoding import token_length

        texts = ([n or "" for n in negative_prompts] if do_cfg else []) + list(prompts)
        embeds = self._embed(texts, token_length(self.tokenizer), device)
        return embeds.to(dtype=self.text_encoder.dtype, device=device)

    # -- latents ---------------------------------------------------------------------------------------------
    def _encode_vae(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        """VAE posterior *sample* times the scaling factor (the reference samples, with the same generator(s))."""
        if isinstance(generator, list):
            latents = [
                self.vae.encode(pixels[i : i + 1]).latent_dist.sample(generator=generator[i]) for i in range(pixels.shape[0])
            ]
            latents = torch.cat(latents)
        else:
            latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
        return self.vae.config.scaling_factor * latents

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        object_mask,
        prompt: Union[str, Sequence[str]] = "",
        negative_prompt: Union[str, Sequence[str], None] = None,
        *,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        controlnet_conditioning_scale: float = DEFAULT_CONTROLNET_SCALE,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: Union[torch.Generator, list, None] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "np",
        callback: Optional[Callable[[int, int], None]] = None,
        show_progress: bool = True,
    ) -> SalientBackgroundOutput:
        """Generate backgrounds.

        ``image``: framed photo(s) -- PIL, numpy or a torch IMAGE [B,H,W,C] in [0,1]. ``object_mask``: 1 = object,
        soft or binary, same size; one mask is broadcast over the batch (and one image over several masks).
        ``prompt`` / ``negative_prompt``: one for all, or one per image. ``generator``: one, or a list with one per
        output (``B * num_images_per_prompt``; each output is then reproducible on its own). ``callback(step,
        total)`` runs after every step (raise from it to stop). ``output_type``: "np", "pt", "pil" or "latent".
        """
        _check_call_settings(num_inference_steps, num_images_per_prompt, control_guidance_start, control_guidance_end)
        batch = self._prepare_batch(image, object_mask, prompt, negative_prompt, num_images_per_prompt, generator)
        do_cfg = guidance_scale > 1.0
        device, dtype = self._execution_device, self.unet.dtype

        # text (per output: each prompt repeated n times, as the reference's repeat + view)
        embeds = self.encode_prompt(batch.prompts, batch.negatives, device, do_cfg)
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0).to(dtype)
        latents, conditioning = self._prepare_latents(batch, num_inference_steps, generator, latents, do_cfg)
        latents = self._denoise(
            latents, conditioning, embeds, guidance_scale=guidance_scale, do_cfg=do_cfg,
            controlnet_scale=controlnet_conditioning_scale, control_window=(control_guidance_start, control_guidance_end),
            callback=callback, show_progress=show_progress,
        )
        return self._finish(latents, batch.repaint[:, 0].cpu(), output_type)

    # -- the steps of __call__ -----------------------------------------------------------------------------------
    def _prepare_batch(self, image, object_mask, prompt, negative_prompt, n: int, generator) -> "_Batch":
        """Inputs coerced and checked; the per-step tensors (models.generation.inpaint_inputs) repeated per output."""
        device, dtype = self._execution_device, self.unet.dtype
        inputs = build_inpaint_inputs(as_image_batch(image), as_mask_batch(object_mask), layout="BHWC")
        b = inputs.hint.shape[0]
        height, width = inputs.hint.shape[-2:]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise InputError(
                f"image size {height}x{width} (HxW) is not a multiple of {self.vae_scale_factor}; frame it first "
                "(e.g. the 512x512 letterbox of models.imaging.framing.fit_transform)"
            )
        prompts = _as_list(prompt, b, "prompt")
        negatives = _as_list(negative_prompt, b, "negative prompt")
        if isinstance(generator, list) and len(generator) != b * n:
            raise InputError(f"got {len(generator)} generators for {b * n} outputs ({b} images x {n} per prompt)")
        return _Batch(
            prompts=prompts, negatives=negatives, total=b * n, height=height, width=width,
            hint=inputs.hint.repeat_interleave(n, dim=0).to(device=device, dtype=dtype),
            repaint=inputs.repaint_mask.repeat_interleave(n, dim=0),
            masked_image=inputs.masked_image.repeat_interleave(n, dim=0).to(device=device, dtype=dtype),
        )

    def _prepare_latents(self, batch: "_Batch", steps: int, generator, latents, do_cfg: bool):
        """(initial latents, conditioning dict). The initial noise is drawn FIRST, then the masked-image posterior
        sample: the reference's order of random draws."""
        device, dtype = self._execution_device, self.unet.dtype
        self.scheduler.set_timesteps(steps, device=device)
        factor = self.vae_scale_factor
        shape = (batch.total, self.vae.config.latent_channels, batch.height // factor, batch.width // factor)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        mask_latent = latent_mask(batch.repaint, shape[2], shape[3]).to(device=device, dtype=dtype)
        masked_latents = self._encode_vae(batch.masked_image, generator).to(dtype)
        hint = batch.hint
        if do_cfg:
            mask_latent, masked_latents, hint = (torch.cat([t] * 2) for t in (mask_latent, masked_latents, hint))
        return latents, {"mask_latent": mask_latent, "masked_latents": masked_latents, "hint": hint}

    def _denoise(self, latents, conditioning: dict, embeds, *, guidance_scale: float, do_cfg: bool,
                 controlnet_scale: float, control_window: tuple, callback, show_progress: bool):
        """The denoising loop over the scheduler's timesteps; returns the final latents."""
        timesteps = self.scheduler.timesteps
        steps = len(timesteps)
        use_controlnet = self.controlnet is not None and controlnet_scale != 0.0
        start, end = control_window
        progress = self.progress_bar(total=steps) if show_progress else None
        try:
            controlnet = self.controlnet if use_controlnet else None
            with hint_embedded_once(controlnet), small_convolutions_as_matmul(controlnet, self.unet):
                for i, t in enumerate(timesteps):
                    in_window = not (i / steps < start or (i + 1) / steps > end)
                    scale = controlnet_scale if use_controlnet and in_window else 0.0
                    noise = self._predict_noise(latents, t, conditioning, embeds, scale, guidance_scale, do_cfg)
                    latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
                    if progress is not None:
                        progress.update()
                    if callback is not None:
                        callback(i + 1, steps)
        finally:
            if progress is not None:
                progress.close()
        return latents

    def _predict_noise(self, latents, t, conditioning: dict, embeds, controlnet_scale: float, guidance_scale: float,
                       do_cfg: bool) -> torch.Tensor:
        """One step's guided noise prediction; the ControlNet runs unless ``controlnet_scale`` is 0."""
        model_in = torch.cat([latents] * 2) if do_cfg else latents
        model_in = self.scheduler.scale_model_input(model_in, t)
        model_in = torch.cat([model_in, conditioning["mask_latent"], conditioning["masked_latents"]], dim=1)
        down = mid = None
        if controlnet_scale != 0.0:
            down, mid = self.controlnet(
                model_in,  # the SAME 9-channel tensor as the UNet (the reference's one change)
                t, encoder_hidden_states=embeds, controlnet_cond=conditioning["hint"],
                conditioning_scale=float(controlnet_scale), guess_mode=False, return_dict=False,
            )
        noise = self.unet(
            model_in, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, return_dict=False,
        )[0]
        if do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        return noise

    def _finish(self, latents, repaint_out: torch.Tensor, output_type: str) -> SalientBackgroundOutput:
        """Decode the latents into ``output_type`` ("latent" returns them as they are)."""
        if output_type == "latent":
            return SalientBackgroundOutput(latents, repaint_out)
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        images = (decoded * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()
        if output_type == "pt":
            return SalientBackgroundOutput(images, repaint_out)
        images = images.numpy()
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]
        elif output_type != "np":
            raise InputError(f"output_type must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}")
        return SalientBackgroundOutput(images, repaint_out)


@dataclass
class _Batch:
    """One call's inputs, ready for the networks: ``total`` outputs (images x images per prompt)."""

    prompts: list
    negatives: list
    total: int
    height: int
    width: int
    hint: torch.Tensor
    repaint: torch.Tensor
    masked_image: torch.Tensor


class _HintEmbeddedOnce(torch.nn.Module):
    """Stands in for a ControlNet's ``controlnet_cond_embedding`` during one call. The hint is the same tensor at
    every step, so its embedding (convolutions at full pixel size) is computed at the first step and reused: the
    very tensor the module would have returned again, so the result is bitwise the same. Another input is embedded
    afresh."""

    def __init__(self, embedding: torch.nn.Module):
        super().__init__()
        self.embedding = embedding
        self._hint = self._embedded = None

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        if hint is not self._hint:  # embedded lazily: under model offloading the weights move only at the forward
            self._hint, self._embedded = hint, self.embedding(hint)
        return self._embedded


@contextlib.contextmanager
def hint_embedded_once(controlnet):
    """Within the block, ``controlnet`` (a diffusers ``ControlNetModel``, or None: nothing done) embeds its
    conditioning image once instead of at every step (see :class:`_HintEmbeddedOnce`); restored on exit."""
    embedding = getattr(controlnet, "controlnet_cond_embedding", None)
    if embedding is None:
        yield
        return
    controlnet.controlnet_cond_embedding = _HintEmbeddedOnce(embedding)
    try:
        yield
    finally:
        controlnet.controlnet_cond_embedding = embedding


def _check_call_settings(steps: int, per_prompt: int, control_start: float, control_end: float) -> None:
    if steps < 1:
        raise InputError(f"num_inference_steps must be >= 1, got {steps}")
    if per_prompt < 1:
        raise InputError(f"num_images_per_prompt must be >= 1, got {per_prompt}")
    if not 0.0 <= control_start < control_end <= 1.0:
        raise InputError(
            f"need 0 <= control_guidance_start < control_guidance_end <= 1, got {control_start}, {control_end}"
        )


# ---------------------------------------------------------------------------------------------------------------
# checks and the scheduler
# ---------------------------------------------------------------------------------------------------------------
def check_components(unet, controlnet=None) -> None:
    """Fail with a fixing message when the UNet is not a 9-channel inpainting UNet or the ControlNet does not fit it."""
    in_ch = unet.config.in_channels
    if in_ch != 9:
        raise CheckpointError(
            f"the UNet has {in_ch} input channels; this pipeline needs a 9-channel inpainting UNet "
            f"(4 noisy + 1 mask + 4 masked-image latents). Use an inpainting model ({INPAINTING_MODELS})."
        )
    if controlnet is None:
        return
    cn_in = controlnet.config.in_channels
    if cn_in != 9:
        raise CheckpointError(
            f"the ControlNet takes {cn_in} input channels; the salient-aware ControlNet takes the UNet's 9-channel input. "
            "Use a salient ControlNet trained for the UNet's base (the released yahoo-inc/photo-background-generation "
            "one for SD2 inpainting, or one trained with this pack)."
        )
    u_ctx, c_ctx = unet.config.cross_attention_dim, controlnet.config.cross_attention_dim
    if u_ctx != c_ctx:
        raise CheckpointError(
            f"the ControlNet's cross-attention width is {c_ctx} but the UNet's is {u_ctx}: they are not for the same base "
            "model. A salient ControlNet only steers the inpainting UNet it was trained on."
        )
    if tuple(unet.config.block_out_channels) != tuple(controlnet.config.block_out_channels):
        raise CheckpointError(
            f"the ControlNet's block widths {tuple(controlnet.config.block_out_channels)} differ from the UNet's "
            f"{tuple(unet.config.block_out_channels)}: they are not for the same base model."
        )


def make_scheduler(name: str, config: dict):
    """A scheduler of kind ``name`` (see :data:`SCHEDULERS`) from an SD scheduler config (``from_config``)."""
    import diffusers

    key = name.lower()
    if key not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[key]).from_config(config)
