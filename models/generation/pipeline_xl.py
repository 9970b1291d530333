"""The salient-ControlNet pipeline on SDXL inpainting (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``).

Everything of :class:`.pipeline.SalientBackgroundPipeline` holds (the ControlNet receives the UNet's 9-channel input,
the hint is the soft inverted object mask, the same random draws); SDXL adds, as diffusers' SDXL pipelines do:

* two text encoders: the context is both encoders' penultimate hidden states side by side, and the second encoder's
  projected pooled embedding joins the added conditioning (:func:`.text_encoding.encode_texts_xl`, shared with the
  trainer). An empty negative prompt is all zeros (context and pooled) when the model's
  ``force_zeros_for_empty_prompt`` says so (SDXL's default), as diffusers does for no negative prompt;
* the added conditioning of UNet and ControlNet: the pooled embedding + time ids ``[orig_h, orig_w, crop_top,
  crop_left, target_h, target_w]`` = ``[H, W, 0, 0, H, W]`` of the framed canvas. It reaches both networks through a
  forward pre-hook for the duration of a call, so the denoising step is the SD2 one, unchanged;
* the VAE stays in float32 whatever the pipeline's precision (SDXL's VAE overflows in fp16).

Its models are loaded by :mod:`.loading` (:func:`models.generation.loading.load_xl_components`).
"""
from __future__ import annotations

import torch

from .pipeline import SalientBackgroundPipeline, check_components
from .text_encoding import encode_texts_xl


class SalientBackgroundXLPipeline(SalientBackgroundPipeline):
    """SDXL inpainting + salient ControlNet (``controlnet`` may be None: the plain inpainting baseline)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->controlnet->unet->vae"
    _optional_components = ["controlnet"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, controlnet=None,
                 force_zeros_for_empty_prompt: bool = True):
        super(SalientBackgroundPipeline, self).__init__()  # DiffusionPipeline's: this class registers its own parts
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, controlnet=controlnet)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        check_components(unet, controlnet)
        self._pooled = self._added_cond = None

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], negative_prompts: list[str], device, do_cfg: bool) -> torch.Tensor:
        """The context [(2)B,77,D1+D2] (negatives first when ``do_cfg``); the pooled embeddings are kept for the
        added conditioning of this call."""
        negatives = [n or "" for n in negative_prompts] if do_cfg else []
        context, pooled = encode_texts_xl([self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2],
                                          negatives + list(prompts))
        if negatives and self.config.force_zeros_for_empty_prompt:
            empty = torch.tensor([not n for n in negatives] + [False] * len(prompts), device=context.device)
            context = torch.where(empty[:, None, None], torch.zeros_like(context), context)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        self._pooled = pooled.to(device)
        return context.to(device)

    def _prepare_latents(self, batch, steps: int, generator, latents, do_cfg: bool):
        latents, conditioning = super()._prepare_latents(batch, steps, generator, latents, do_cfg)
        per_prompt = batch.total // len(batch.prompts)
        pooled = self._pooled.repeat_interleave(per_prompt, dim=0).to(dtype=self.unet.dtype)
        time_ids = torch.tensor([[batch.height, batch.width, 0, 0, batch.height, batch.width]],
                                dtype=pooled.dtype, device=pooled.device).repeat(pooled.shape[0], 1)
        self._added_cond = {"text_embeds": pooled, "time_ids": time_ids}
        return latents, conditioning

    def _add_conditioning(self, module, args, kwargs):
        """Forward pre-hook of the UNet and the ControlNet: SDXL's added conditioning for this call."""
        if self._added_cond is not None and kwargs.get("added_cond_kwargs") is None:
            kwargs["added_cond_kwargs"] = self._added_cond
        return args, kwargs

    def _encode_vae(self, pixels: torch.Tensor, generator) -> torch.Tensor:
        return super()._encode_vae(pixels.to(self.vae.dtype), generator)

    def _finish(self, latents, repaint_out: torch.Tensor, output_type: str):
        if output_type != "latent":
            latents = latents.to(self.vae.dtype)
        return super()._finish(latents, repaint_out, output_type)

    def __call__(self, *args, **kwargs):
        networks = [m for m in (self.unet, self.controlnet) if m is not None]
        handles = [m.register_forward_pre_hook(self._add_conditioning, with_kwargs=True) for m in networks]
        try:
            return super().__call__(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            self._pooled = self._added_cond = None
