"""A tiny random BLIP-2 (ViT + Q-Former + OPT) saved with its processor, in the layout of a local BLIP-2 folder.

Byte-level vocabulary of single characters (no merges) plus ``<|endoftext|>``, ``<image>`` and ``<pad>``; the config
carries ``image_token_index`` and the processor ``num_query_tokens`` as current BLIP-2 folders do. Random weights: the
captions it writes are arbitrary (possibly empty) strings -- it exercises the loading and generation code only.
"""
from __future__ import annotations

import json
import os


def save_tiny_blip2(folder: str, seed: int = 0) -> str:
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              GPT2Tokenizer, OPTConfig)

    from .diffusers_models import _bytes_to_unicode

    os.makedirs(folder, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    for token in ("<|endoftext|>", "<image>", "<pad>"):
        vocab[token] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                              bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                              pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    eos = vocab["<|endoftext|>"]
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            encoder_hidden_size=32, vocab_size=100),
        text_config=OPTConfig(vocab_size=len(vocab), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                              bos_token_id=eos, eos_token_id=eos, pad_token_id=vocab["<pad>"]).to_dict(),
        num_query_tokens=4, image_token_index=vocab["<image>"],
    )
    torch.manual_seed(seed)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer,
                   num_query_tokens=4).save_pretrained(folder)
    return folder
