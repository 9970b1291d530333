"""Captions -> text embeddings, the one implementation the pipeline and the trainer share.

Prompts are padded to the tokenizer's full length (77 for SD2's CLIP) and truncated there, as the reference does,
and the frozen text encoder's last hidden state is the conditioning (SD2, SD1.5). SDXL's two encoders give the
penultimate hidden states of both and a pooled embedding (:func:`embed_token_ids_xl`). Pure torch/transformers; no
ComfyUI.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

# CLIP's context length. A tokenizer folder without tokenizer_config.json reports a huge sentinel
# (``int(1e30)``) as its model_max_length; padding to that would never end, so such tokenizers get this.
FALLBACK_MAX_LENGTH = 77
_UNSET_LENGTH_ABOVE = 100_000


def token_length(tokenizer) -> int:
    """The length prompts are padded/truncated to: the tokenizer's own, or 77 when its folder did not say."""
    max_length = tokenizer.model_max_length
    if max_length is None or max_length > _UNSET_LENGTH_ABOVE:
        return FALLBACK_MAX_LENGTH
    return max_length


def fix_token_length(tokenizer):
    """Set ``model_max_length`` to :func:`token_length` on the tokenizer itself (for code that reads the attribute)."""
    tokenizer.model_max_length = token_length(tokenizer)
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str], max_length: Optional[int] = None):
    """Token ids (and attention mask) of ``texts``, padded to ``max_length`` (default :func:`token_length`)."""
    return tokenizer(list(texts), padding="max_length", max_length=max_length or token_length(tokenizer),
                     truncation=True, return_tensors="pt")


def embed_token_ids(text_encoder, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
    """The text encoder's last hidden state for ``input_ids`` (already on the encoder's device).

    Only encoders whose config asks for it (``use_attention_mask``) get an attention mask; CLIP's text encoder (SD2)
    does not, and sees the padding like the reference. Without a mask given, the non-padding ids form it."""
    if getattr(text_encoder.config, "use_attention_mask", False):
        if attention_mask is None:
            attention_mask = (input_ids != text_encoder.config.pad_token_id).long()
        attention_mask = attention_mask.to(input_ids.device)
    else:
        attention_mask = None
    return text_encoder(input_ids, attention_mask=attention_mask)[0]


def encode_texts(tokenizer, text_encoder, texts: Sequence[str], device, max_length: Optional[int] = None):
    """[len(texts), L, D] embeddings of ``texts``: :func:`tokenize` then :func:`embed_token_ids`."""
    tokens = tokenize(tokenizer, texts, max_length)
    return embed_token_ids(text_encoder, tokens.input_ids.to(device), tokens.attention_mask)


def embed_token_ids_xl(text_encoders: Sequence, input_ids: Sequence[torch.Tensor]):
    """SDXL's text conditioning from the token ids of each of its encoders: (context, pooled).

    ``context`` is every encoder's *penultimate* hidden state, concatenated along the width (768 + 1280 = 2048 for
    SDXL); ``pooled`` is the last encoder's projected pooled embedding (1280), which joins the size/crop time ids in
    the added conditioning. This is how diffusers' SDXL pipelines and training examples encode prompts."""
    hidden, pooled = [], None
    for encoder, ids in zip(text_encoders, input_ids):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled.reshape(pooled.shape[0], -1)


def encode_texts_xl(tokenizers: Sequence, text_encoders: Sequence, texts: Sequence[str]):
    """(context [len(texts), L, 2048], pooled [len(texts), 1280]) of ``texts`` for SDXL's two encoders."""
    ids = [tokenize(tokenizer, texts).input_ids for tokenizer in tokenizers]
    return embed_token_ids_xl(text_encoders, ids)
