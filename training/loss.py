"""The training objective: epsilon (or v) MSE of the UNet with the ControlNet's residuals, per batch.

With SDXL both networks also receive the added conditioning: the pooled text embedding and each sample's time ids.

The photo and its masked version become latents (VAE posterior draws, or the cached posteriors), the repaint mask is
downsampled to the latent grid, DDPM noise is added at the sample's timestep, and the ControlNet receives the same
9-channel tensor as the UNet. Every random draw (noise, timestep, posterior draws) arrives with the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.generation.inpaint_inputs import latent_mask
from ..models.generation.text_encoding import embed_token_ids, embed_token_ids_xl
from . import data as tdata
from .caches import TextEmbeddingCache


def scaling_factor(vae) -> float:
    return float(vae.config.scaling_factor)


def _latents(batch: dict, vae, weight_dtype, device, vae_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents fp32, masked-image latents in ``weight_dtype``): posterior mean + std * the batch's draws. The VAE
    runs in ``vae_dtype`` (default ``weight_dtype``; fp32 for SDXL's VAE under fp16, which overflows)."""
    if "latent_mean" in batch:  # the latent cache: the VAE posteriors were computed once, before training
        moments = [batch[k].to(device, torch.float32) for k in tdata.LATENT_KEYS]
    else:
        moments = []
        for key in ("pixel_values", "masked_image"):
            posterior = vae.encode(batch[key].to(device, vae_dtype or weight_dtype)).latent_dist
            moments += [posterior.mean, posterior.std]
    scale = scaling_factor(vae)
    latents = (moments[0] + moments[1] * batch["latent_eps"].to(device, moments[0].dtype)) * scale
    masked_latents = (moments[2] + moments[3] * batch["masked_latent_eps"].to(device, moments[2].dtype)) * scale
    return latents.float(), masked_latents.to(weight_dtype)


def _text_embeddings(batch: dict, text_encoder, weight_dtype, device):
    """(context, pooled or None): from the :class:`TextEmbeddingCache`, or the text encoder(s) on the batch's ids
    (SDXL: a list of its two encoders, which also give the pooled embedding)."""
    if isinstance(text_encoder, TextEmbeddingCache):
        pooled = text_encoder.lookup_pooled(batch["caption"]).to(device, weight_dtype) \
            if text_encoder.pooled is not None else None
        return text_encoder.lookup(batch["caption"]).to(device, weight_dtype), pooled
    if isinstance(text_encoder, (list, tuple)):
        ids = [batch["input_ids"]] + [batch[f"input_ids_{n + 1}"] for n in range(1, len(text_encoder))]
        context, pooled = embed_token_ids_xl(text_encoder, [i.to(device) for i in ids])
        return context.to(weight_dtype), pooled.to(weight_dtype)
    return embed_token_ids(text_encoder, batch["input_ids"].to(device)).to(weight_dtype), None


def _added_conditioning(batch: dict, pooled, weight_dtype, device) -> dict:
    """SDXL's ``added_cond_kwargs`` (the pooled text embedding and the time ids) for UNet and ControlNet alike;
    nothing for the other bases, which have no added conditioning."""
    if pooled is None:
        return {}
    return {"added_cond_kwargs": {"text_embeds": pooled,
                                  "time_ids": batch["time_ids"].to(device, weight_dtype)}}


def training_loss(batch: dict, *, controlnet, unet, vae, text_encoder, noise_scheduler, weight_dtype, device,
                  return_residuals: bool = False, vae_dtype=None):
    """The epsilon-MSE of one batch (the per-sample random draws come with the batch); with ``return_residuals``
    also the ControlNet's outputs (down residuals + mid), where the low-memory step cuts the backward in two.
    ``text_encoder`` is the frozen text encoder (SDXL: a list of its two) or a :class:`TextEmbeddingCache` standing
    in for it."""
    with torch.no_grad():
        latents, masked_latents = _latents(batch, vae, weight_dtype, device, vae_dtype)
        text, pooled = _text_embeddings(batch, text_encoder, weight_dtype, device)
        added = _added_conditioning(batch, pooled, weight_dtype, device)
    noise = batch["noise"].to(device, torch.float32)
    timesteps = batch["timestep"].to(device).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    mask = latent_mask(batch["repaint_mask"].to(device), latents.shape[2], latents.shape[3])
    model_in = torch.cat([noisy.to(weight_dtype), mask.to(weight_dtype), masked_latents], dim=1)
    down, mid = controlnet(
        model_in, timesteps, encoder_hidden_states=text, controlnet_cond=batch["hint"].to(device, weight_dtype),
        return_dict=False, **added,
    )
    pred = unet(
        model_in, timesteps, encoder_hidden_states=text,
        down_block_additional_residuals=[r.to(weight_dtype) for r in down],
        mid_block_additional_residual=mid.to(weight_dtype), return_dict=False, **added,
    )[0]
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    return (loss, [*down, mid]) if return_residuals else loss
