"""Work the pipeline does once where the reference does it several times, and that this changes no output.

The ControlNet's hint is the same tensor at every step; its conditioning embedding (convolutions at full pixel
size) is computed at the first step and reused (``models.generation.pipeline.hint_embedded_once``). The prompts
and the negative prompts go through the text encoder as one batch (the same embeddings within float rounding).
The ControlNet's convolutions over few positions run as one matrix product each during a call
(``models.generation.small_convolutions``; the same image within the parity tolerance).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch


from salient_background.models.generation import pipeline as pipeline_module

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    from salient_background.models.generation.loading import load_pipeline

    return load_pipeline(tiny_sd.hf_pipeline_dir)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    photo = torch.rand((1, SIZE, SIZE, 3), generator=g)
    object_mask = torch.zeros(1, SIZE, SIZE)
    object_mask[:, 16:40, 20:44] = 1.0
    object_mask[:, 12:16, 20:44] = 0.6  # soft edge: the hint is soft
    return photo, object_mask


def _latents(pipe, photo, object_mask, steps: int = 4, **kw):
    return pipe(photo, object_mask, "a bottle", num_inference_steps=steps, generator=torch.Generator().manual_seed(3),
                output_type="latent", show_progress=False, **kw).images


def test_hint_is_embedded_once_per_call_and_restored(pipe):
    embedding = pipe.controlnet.controlnet_cond_embedding
    hints = []
    handle = embedding.register_forward_pre_hook(lambda module, args: hints.append(args[0]))
    try:
        photo, object_mask = _inputs(0)
        _latents(pipe, photo, object_mask, steps=4)
        assert len(hints) == 1  # 4 steps, one embedding
        assert hints[0].shape == (2, 3, SIZE, SIZE)  # the CFG batch's hint, at full pixel size
        _latents(pipe, *_inputs(1), steps=3)  # a new call embeds its own hint
        assert len(hints) == 2
    finally:
        handle.remove()
    assert pipe.controlnet.controlnet_cond_embedding is embedding  # the ControlNet is left as it was


def test_embedding_once_changes_no_bit(pipe, monkeypatch):
    photo, object_mask = _inputs(2)
    once = _latents(pipe, photo, object_mask, steps=5)
    monkeypatch.setattr(pipeline_module, "hint_embedded_once", lambda controlnet: contextlib.nullcontext())
    every_step = _latents(pipe, photo, object_mask, steps=5)
    assert torch.equal(once, every_step)
    # a control window (ControlNet off for the last steps) is unaffected as well
    monkeypatch.undo()
    windowed = _latents(pipe, photo, object_mask, steps=5, control_guidance_end=0.6)
    monkeypatch.setattr(pipeline_module, "hint_embedded_once", lambda controlnet: contextlib.nullcontext())
    assert torch.equal(windowed, _latents(pipe, photo, object_mask, steps=5, control_guidance_end=0.6))
    assert not torch.equal(windowed, once)


def test_restored_when_a_step_fails(pipe):
    embedding = pipe.controlnet.controlnet_cond_embedding

    def stop(step, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe(*_inputs(0), "a bottle", num_inference_steps=3, callback=stop, show_progress=False)
    assert pipe.controlnet.controlnet_cond_embedding is embedding


def test_prompts_and_negatives_are_encoded_in_one_pass(pipe):
    """The reference encodes the prompts and the negative prompts in two text-encoder calls; one batch gives the same
    embeddings (negatives first) for one pass over the encoder's weights."""
    from salient_background.models.generation.text_encoding import encode_texts

    calls = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        embeds = pipe.encode_prompt(["a swan", "a red chair"], ["blurry", None], "cpu", do_cfg=True)
        plain = pipe.encode_prompt(["a swan"], [None], "cpu", do_cfg=False)
    finally:
        handle.remove()
    assert calls == [4, 1]
    with torch.no_grad():
        separate = [encode_texts(pipe.tokenizer, pipe.text_encoder, [text], "cpu", 77)[0]
                    for text in ("blurry", "", "a swan", "a red chair")]
    torch.testing.assert_close(embeds, torch.stack(separate), atol=1e-6, rtol=0)
    torch.testing.assert_close(plain[0], separate[2], atol=1e-6, rtol=0)


def test_small_convolutions_run_as_matmul_during_a_call(pipe, monkeypatch):
    """The convolutions over few positions (the deepest levels of the ControlNet and of the UNet) run as one matrix
    product during a call (models.generation.small_convolutions); nothing is left patched afterwards, and the image
    moves only by float rounding (within the parity tolerance)."""
    from salient_background.models.generation import small_convolutions

    controlnet_convs = {id(m) for m in pipe.controlnet.modules() if isinstance(m, torch.nn.Conv2d)}
    unet_convs = {id(m) for m in pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)}
    calls = []
    real = small_convolutions.conv2d_as_matmul

    def counted(conv, x, weight, bias):
        calls.append(id(conv))
        return real(conv, x, weight, bias)

    monkeypatch.setattr(small_convolutions, "conv2d_as_matmul", counted)
    photo, object_mask = _inputs(4)
    image = lambda: pipe(photo, object_mask, "a bottle", num_inference_steps=3, generator=torch.Generator().manual_seed(3),
                         show_progress=False).images  # noqa: E731
    fast = image()
    assert set(calls) & controlnet_convs and set(calls) & unet_convs and set(calls) <= controlnet_convs | unet_convs
    every = list(pipe.controlnet.modules()) + list(pipe.unet.modules())
    assert all("_conv_forward" not in vars(m) for m in every)

    calls.clear()
    _latents(pipe, photo, object_mask, steps=3, controlnet_conditioning_scale=0.0)
    assert calls and set(calls) <= unet_convs  # the SI2 baseline runs no ControlNet: its UNet's convolutions only

    monkeypatch.setattr(pipeline_module, "small_convolutions_as_matmul", lambda *networks: contextlib.nullcontext())
    plain = image()
    assert np.abs(fast - plain).max() <= 1e-4  # the parity tolerance against the reference (test_pipeline_parity)
