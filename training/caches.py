"""What the trainer computes once instead of every step: caption embeddings and VAE latents.

* :class:`TextEmbeddingCache`: the frozen text encoder's output for every distinct caption, in memory (rebuilt at the
  start of each session; the encoder can then leave memory).
* :func:`build_latent_cache`: the VAE posteriors of a few fixed crops of every photo, on disk under
  ``<output_dir>/latent_cache`` (kept across sessions; rebuilt when the settings or data change).

Both are exact: the encoders are frozen, so a cached value is the value the step would have computed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import torch

from ..models.generation.text_encoding import embed_token_ids, tokenize
from . import data as tdata

log = logging.getLogger("salient_background")

LATENT_CACHE_DIR = "latent_cache"
LATENT_CACHE_CONFIG = "cache_config.json"


class TextEmbeddingCache:
    """Text embeddings of every distinct caption of the dataset (and ""), computed once with the frozen text encoder,
    which can then leave memory. The encoder is frozen, so this changes nothing but time and memory; it suits datasets
    whose distinct captions fit in memory (77 x width floats each: ~315 kB at SD2's 1024 in fp32)."""

    def __init__(self, text_encoder, tokenizer, captions, device, dtype, batch_size: int = 32):
        texts = sorted(set(captions) | {""})
        self.index = {t: i for i, t in enumerate(texts)}
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids = tokenize(tokenizer, texts[start:start + batch_size]).input_ids.to(device)
                # the ids alone, as the per-step path sees them (the batch carries no attention mask)
                chunks.append(embed_token_ids(text_encoder, ids).to(dtype))
        self.table = torch.cat(chunks)

    @staticmethod
    def table_bytes(text_encoder, captions, dtype) -> int:
        distinct = len(set(captions) | {""})
        return distinct * text_encoder.config.max_position_embeddings * text_encoder.config.hidden_size * \
            torch.finfo(dtype).bits // 8

    @staticmethod
    def worthwhile(text_encoder, captions, dtype) -> bool:
        """Whether the table is smaller than the encoder it replaces (~4000 distinct captions for SD2 in fp32)."""
        encoder_bytes = sum(p.numel() * p.element_size() for p in text_encoder.parameters())
        return TextEmbeddingCache.table_bytes(text_encoder, captions, dtype) <= encoder_bytes

    def lookup(self, captions) -> torch.Tensor:
        return self.table[torch.tensor([self.index[c] for c in captions], device=self.table.device)]


def _latent_cache_signature(config, dataset) -> dict:
    """What the cached latents depend on; a cache made for another signature is rebuilt."""
    cfg = dataset.config
    return {"resolution": cfg.resolution, "resize_to": cfg.resize_to, "crops": cfg.latent_cache_crops,
            "seed": cfg.seed, "rows": len(dataset), "base_model": os.path.abspath(config.base_model),
            "first_row": dataset.rows[0]["image"], "last_row": dataset.rows[-1]["image"]}


def _open_latent_cache(config, dataset, accelerator) -> str:
    """The cache folder, emptied first when it was built for other settings or data (by the main process)."""
    folder = os.path.join(config.output_dir, LATENT_CACHE_DIR)
    os.makedirs(folder, exist_ok=True)
    signature = _latent_cache_signature(config, dataset)
    sig_path = os.path.join(folder, LATENT_CACHE_CONFIG)
    if accelerator.is_main_process:
        if os.path.isfile(sig_path) and json.load(open(sig_path)) != signature:
            log.warning("the latent cache in %s was built for other settings or data: rebuilding it", folder)
            shutil.rmtree(folder)
            os.makedirs(folder)
        with open(sig_path, "w") as fh:
            json.dump(signature, fh, indent=2)
    accelerator.wait_for_everyone()
    return folder


def _encode_row(dataset, index: int, vae, device, weight_dtype) -> dict:
    """The VAE posteriors (mean, std) of the photo and of the masked photo for every cached crop of one row."""
    from ..models.generation.inpaint_inputs import build_inpaint_inputs

    out = {k: [] for k in tdata.LATENT_KEYS}
    for crop in range(dataset.config.latent_cache_crops):
        image, mask = dataset.load_crop(index, dataset.cache_crop_rng(index, crop))
        inputs = build_inpaint_inputs(image[None], mask[None], layout="BCHW")
        for prefix, pixels in (("latent", image[None] * 2.0 - 1.0), ("masked", inputs.masked_image)):
            posterior = vae.encode(pixels.to(device, weight_dtype)).latent_dist
            out[f"{prefix}_mean"].append(posterior.mean[0].float().cpu())
            out[f"{prefix}_std"].append(posterior.std[0].float().cpu())
    return {k: torch.stack(v).contiguous() for k, v in out.items()}


def build_latent_cache(config, dataset, vae, accelerator, weight_dtype) -> str:
    """VAE posteriors (mean, std) of the photo and of the masked photo for ``latent_cache_crops`` fixed crops of every
    row, one safetensors file per row under ``<output_dir>/latent_cache``. Built once (each process its share of the
    rows, resumable: existing files are kept), then training runs no VAE at all. The crops are a function of the seed;
    the random crop of each sample is drawn among them (so the crop augmentation has K positions per photo instead of
    all of them). Not combinable with the mask augmentation (it changes the masked photo)."""
    from safetensors.torch import save_file

    folder = _open_latent_cache(config, dataset, accelerator)
    start = time.perf_counter()
    built = 0
    with torch.no_grad():
        for index in range(accelerator.process_index, len(dataset), accelerator.num_processes):
            path = tdata.cached_latents_path(folder, index)
            if os.path.isfile(path):
                continue
            save_file(_encode_row(dataset, index, vae, accelerator.device, weight_dtype), path + ".tmp")
            os.replace(path + ".tmp", path)
            built += 1
    accelerator.wait_for_everyone()
    if built:
        log.info("latent cache: %d rows x %d crops encoded in %.1f s (%s)", built, dataset.config.latent_cache_crops,
                 time.perf_counter() - start, folder)
    return folder
