"""models/generation/text_encoding.py: the one caption -> embedding path of the pipeline and the trainer."""
from __future__ import annotations

import torch
from transformers import CLIPTokenizer

from sb_testkit.diffusers_models import build_tiny_text_encoder, write_toy_tokenizer

from salient_background.models.generation.text_encoding import (FALLBACK_MAX_LENGTH, embed_token_ids, encode_texts,
                                                     fix_token_length, token_length, tokenize)


def _tokenizer(tmp_path):
    return CLIPTokenizer.from_pretrained(write_toy_tokenizer(str(tmp_path / "tok")))


def test_token_length_falls_back_to_77_for_a_tokenizer_without_config(tmp_path):
    tok = _tokenizer(tmp_path)
    assert token_length(tok) == 77
    tok.model_max_length = int(1e30)  # what a tokenizer folder without tokenizer_config.json reports
    assert token_length(tok) == FALLBACK_MAX_LENGTH == 77
    tok.model_max_length = None
    assert token_length(tok) == 77
    assert fix_token_length(tok).model_max_length == 77
    tok.model_max_length = 40
    assert token_length(tok) == 40 and tokenize(tok, ["a photo", ""]).input_ids.shape == (2, 40)


def test_pipeline_and_trainer_embed_a_caption_identically(tmp_path):
    from salient_background.training.caches import TextEmbeddingCache

    tok, te = _tokenizer(tmp_path), build_tiny_text_encoder()
    captions = ["a red bottle on the table", "a swan in the garden"]
    table = TextEmbeddingCache(te, tok, captions, "cpu", torch.float32)
    direct = encode_texts(tok, te, captions, "cpu")
    by_hand = te(tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)[0]
    assert torch.equal(direct, by_hand)
    assert torch.equal(table.lookup(captions), direct)
    # the pipeline's encode_prompt: [negative ""; prompts] with guidance
    embeds = _encode_prompt(tok, te, captions)
    assert torch.equal(embeds[2:], direct) and torch.equal(embeds[:2], table.lookup(["", ""]))


def _encode_prompt(tok, te, prompts):
    """SalientBackgroundPipeline.encode_prompt on a stand-in object holding just the tokenizer and text encoder."""
    from salient_background.models.generation.pipeline import SalientBackgroundPipeline

    class Holder:
        tokenizer, text_encoder = tok, te
        _embed = SalientBackgroundPipeline._embed

    return SalientBackgroundPipeline.encode_prompt(Holder(), prompts, ["", ""], "cpu", True)


def test_an_encoder_that_wants_an_attention_mask_gets_one():
    seen = {}

    class Encoder(torch.nn.Module):
        class config:
            use_attention_mask = True
            pad_token_id = 0

        def forward(self, ids, attention_mask=None):
            seen["mask"] = attention_mask
            return (ids.float()[..., None],)

    ids = torch.tensor([[5, 6, 0, 0]])
    embed_token_ids(Encoder(), ids)
    assert seen["mask"].tolist() == [[1, 1, 0, 0]]  # from the ids when none is given
    embed_token_ids(Encoder(), ids, torch.tensor([[1, 1, 1, 0]]))
    assert seen["mask"].tolist() == [[1, 1, 1, 0]]  # the tokenizer's, when given
