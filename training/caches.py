"""What the trainer computes once instead of every step: caption embeddings and VAE latents.

* :class:`TextEmbeddingCache`: the frozen text encoder's output for every distinct caption, in memory (rebuilt at the
  start of each session; the encoder can then leave memory).
* :func:`build_latent_cache`: the VAE posteriors of a few fixed crops of every photo, on disk under
  ``<output_dir>/latent_cache`` (kept across sessions; rebuilt when the settings or data change).

Both are exact: the encoders are frozen, so a cached value is the value the step would have computed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import torch

from ..models.bases import DEFAULT_BASE
from ..models.generation.text_encoding import embed_token_ids, embed_token_ids_xl, tokenize
from . import data as tdata

log = logging.getLogger("salient_background")

LATENT_CACHE_DIR = "latent_cache"
LATENT_CACHE_CONFIG = "cache_config.json"
ROWS_DIGEST = "rows_sha256"


def as_list(value) -> list:
    """SDXL's (text encoders | tokenizers) are a list; the other bases' single one becomes a list of one."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


class TextEmbeddingCache:
    """Text embeddings of every distinct caption of the dataset (and ""), computed once with the frozen text encoder,
    which can then leave memory. The encoder is frozen, so this changes nothing but time and memory; it suits datasets
    whose distinct captions fit in memory (77 x width floats each: ~315 kB at SD2's 1024 in fp32).

    With SDXL's two encoders (``text_encoder`` and ``tokenizer`` given as lists) the table holds the concatenated
    context and :attr:`pooled` the pooled embeddings, both as :func:`embed_token_ids_xl` computes them."""

    def __init__(self, text_encoder, tokenizer, captions, device, dtype, batch_size: int = 32):
        texts = sorted(set(captions) | {""})
        self.index = {t: i for i, t in enumerate(texts)}
        xl = isinstance(text_encoder, (list, tuple))
        chunks, pooled = [], []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                if xl:
                    ids = [tokenize(t, batch).input_ids.to(device) for t in tokenizer]
                    context, pool = embed_token_ids_xl(text_encoder, ids)
                    chunks.append(context.to(dtype))
                    pooled.append(pool.to(dtype))
                    continue
                ids = tokenize(tokenizer, batch).input_ids.to(device)
                # the ids alone, as the per-step path sees them (the batch carries no attention mask)
                chunks.append(embed_token_ids(text_encoder, ids).to(dtype))
        self.table = torch.cat(chunks)
        self.pooled = torch.cat(pooled) if xl else None

    @staticmethod
    def table_bytes(text_encoder, captions, dtype) -> int:
        distinct = len(set(captions) | {""})
        encoders = as_list(text_encoder)
        width = sum(e.config.hidden_size for e in encoders) + (encoders[-1].config.projection_dim if len(encoders) > 1 else 0)
        return distinct * encoders[0].config.max_position_embeddings * width * torch.finfo(dtype).bits // 8

    @staticmethod
    def worthwhile(text_encoder, captions, dtype) -> bool:
        """Whether the table is smaller than the encoder(s) it replaces (~4000 distinct captions for SD2 in fp32)."""
        encoder_bytes = sum(p.numel() * p.element_size() for e in as_list(text_encoder) for p in e.parameters())
        return TextEmbeddingCache.table_bytes(text_encoder, captions, dtype) <= encoder_bytes

    def _rows(self, captions) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in captions], device=self.table.device)

    def lookup(self, captions) -> torch.Tensor:
        return self.table[self._rows(captions)]

    def lookup_pooled(self, captions) -> torch.Tensor:
        """SDXL: the pooled embeddings of ``captions``."""
        return self.pooled[self._rows(captions)]


def _latent_cache_signature(config, dataset) -> dict:
    """What the cached latents depend on; a cache made for another signature is rebuilt."""
    cfg = dataset.config
    signature = {"resolution": cfg.resolution, "resize_to": cfg.resize_to, "crops": cfg.latent_cache_crops,
                 "seed": cfg.seed, "rows": len(dataset), "base_model": os.path.abspath(config.base_model),
                 "first_row": dataset.rows[0]["image"], "last_row": dataset.rows[-1]["image"],
                 # every row's files in order: the same count with other rows skipped (--skip-bad-rows) is other data
                 ROWS_DIGEST: hashlib.sha256(json.dumps([[r["image"], r.get("mask")] for r in dataset.rows])
                                             .encode("ascii")).hexdigest()}  # json.dumps escapes to ASCII
    # recorded only when they differ from SD2 without a separate VAE, so SD2 caches of earlier versions stay valid
    if config.base and config.base != DEFAULT_BASE:
        signature["base"] = config.base
    if config.vae:
        signature["vae"] = os.path.abspath(config.vae)
    return signature


def _same_cache(recorded: dict, signature: dict) -> bool:
    """Whether a cache recorded with ``recorded`` holds ``signature``'s latents. Caches of versions that did not
    record the rows' digest are compared on the rest (their runs still resume without re-encoding)."""
    if ROWS_DIGEST not in recorded:
        signature = {k: v for k, v in signature.items() if k != ROWS_DIGEST}
    return recorded == signature


def _open_latent_cache(config, dataset, accelerator) -> str:
    """The cache folder, emptied first when it was built for other settings or data (by the main process). The
    record of a cache that fits is left as it is (one of an earlier version keeps its form)."""
    folder = os.path.join(config.output_dir, LATENT_CACHE_DIR)
    os.makedirs(folder, exist_ok=True)
    signature = _latent_cache_signature(config, dataset)
    sig_path = os.path.join(folder, LATENT_CACHE_CONFIG)
    if accelerator.is_main_process:
        fits = os.path.isfile(sig_path) and _same_cache(json.load(open(sig_path)), signature)
        if not fits:
            if os.path.isfile(sig_path):
                log.warning("the latent cache in %s was built for other settings or data: rebuilding it", folder)
                shutil.rmtree(folder)
                os.makedirs(folder)
            with open(sig_path, "w") as fh:
                json.dump(signature, fh, indent=2)
    accelerator.wait_for_everyone()
    return folder


def _encode_row(dataset, index: int, vae, device, weight_dtype) -> dict:
    """The VAE posteriors (mean, std) of the photo and of the masked photo for every cached crop of one row (and,
    for SDXL, each crop's time ids: original size and crop offset)."""
    from ..models.generation.inpaint_inputs import build_inpaint_inputs

    out = {k: [] for k in tdata.LATENT_KEYS + (("time_ids",) if dataset.config.time_ids else ())}
    for crop in range(dataset.config.latent_cache_crops):
        image, mask, time_ids = dataset.load_crop_with_geometry(index, dataset.cache_crop_rng(index, crop))
        if dataset.config.time_ids:
            out["time_ids"].append(time_ids)
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
