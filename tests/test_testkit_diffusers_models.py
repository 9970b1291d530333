"""The tiny SD2-inpainting models of ``sb_testkit.diffusers_models`` really have the layouts they claim."""
from __future__ import annotations

import json
import os

import torch

import pytest



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_si2_folder_has_the_released_layout(tiny_sd):
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    root = tiny_sd.si2_dir
    assert sorted(os.listdir(root)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    keys = load_file(os.path.join(root, "text_encoder", "model.safetensors")).keys()
    assert all(k.startswith("text_model.") for k in keys)  # as released SD2 folders (transformers 5 drops the prefix)
    assert sorted(os.listdir(os.path.join(root, "tokenizer"))) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]  # no tokenizer.json
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(root, "tokenizer"))
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a photo of a swan").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "swan</w>", "<|endoftext|>"]
    assert json.load(open(os.path.join(root, "unet", "config.json")))["in_channels"] == 9
    assert json.load(open(os.path.join(root, "scheduler", "scheduler_config.json")))["_class_name"] == "PNDMScheduler"
    index = json.load(open(os.path.join(tiny_sd.hf_pipeline_dir, "model_index.json")))
    assert index["controlnet"] == ["diffusers", "ControlNetModel"]


def test_controlnet_is_random_everywhere_and_steers_the_unet(tiny_sd):
    unet, _, _, _, controlnet = tiny_sd.load_components()
    state = tiny_sd.controlnet_state_dict()
    assert controlnet.config.in_channels == 9 and controlnet.config.conditioning_channels == 3
    assert len(controlnet.config.conditioning_embedding_out_channels) == 4
    zero = [k for k, v in state.items() if v.is_floating_point() and float(v.abs().max()) == 0.0]
    assert zero == []  # from_unet's zero convs were redrawn too
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 9, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        down, mid = controlnet(x, 500, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        alone = unet(x, 500, encoder_hidden_states=ctx).sample
        steered = unet(x, 500, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
        inverted = controlnet(x, 500, encoder_hidden_states=ctx, controlnet_cond=1 - hint, return_dict=False)[1]
    assert float((steered - alone).abs().mean()) > 0.1 * float(alone.abs().mean())
    assert not torch.allclose(inverted, mid)  # the hint reaches the output
