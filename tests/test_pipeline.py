"""The standalone SI2 + salient ControlNet pipeline on tiny random models in the real on-disk formats.

What the networks receive is captured with forward hooks and compared with tensors built by hand here (not with
``models.generation.inpaint_inputs``): the ControlNet gets the very 9-channel tensor the UNet gets, mask channel = inverted
binarised object mask, hint = soft inverted object mask at full pixel size, masked-image latents = VAE sample of the
photo with the background at 0 -- and scale 0 is exactly diffusers' own SD2-inpainting pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sb_testkit.diffusers_models import build_tiny_unet

from salient_background.models.errors import CheckpointError, InputError

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    from salient_background.models.generation.loading import load_pipeline

    return load_pipeline(tiny_sd.hf_pipeline_dir)


def _photo(seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (batch, SIZE, SIZE, 3), generator=g).float() / 255.0)


def _handmade_object_mask() -> torch.Tensor:
    """[1,64,64]: object = rows 16..39 x cols 24..47 (value 1); rows 8..15 of those columns 0.7 (soft, still object
    after binarising at 0.5); rows 40..47 of those columns 0.3 (soft, background after binarising)."""
    m = torch.zeros(1, SIZE, SIZE)
    m[:, 16:40, 24:48] = 1.0
    m[:, 8:16, 24:48] = 0.7
    m[:, 40:48, 24:48] = 0.3
    return m


def _run(pipe, image, mask, prompt="a photo of a bottle", steps=2, seed=5, **kw):
    gens = kw.pop("generator", None) or torch.Generator().manual_seed(seed)
    return pipe(image, mask, prompt, num_inference_steps=steps, generator=gens, show_progress=False, **kw)


def test_every_checkpoint_form_gives_the_same_images(tiny_sd, pipe, monkeypatch):
    import socket

    from salient_background.models.generation.pipeline import SalientBackgroundPipeline

    from salient_background.models.generation.loading import load_controlnet, load_pipeline

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # loading is offline: any connection fails the test
    monkeypatch.setattr(socket, "create_connection", no_network)

    image, mask = _photo(1, 2), _handmade_object_mask()
    prompts = ["a photo of a swan", "a dark bedroom"]
    reference = _run(pipe, image, mask, prompts).images
    assert reference.shape == (2, SIZE, SIZE, 3) and reference.dtype == np.float32
    assert np.isfinite(reference).all() and reference.min() >= 0 and reference.max() <= 1
    assert reference.std() > 0.01  # a picture, not a constant
    # separate SI2 folder + the released .pth form (nested and 'module.'-prefixed, no config: settings from the UNet)
    separate = load_pipeline(si2_path=tiny_sd.si2_dir, controlnet_path=tiny_sd.controlnet_pth["state_dict_module"])
    assert np.array_equal(_run(separate, image, mask, prompts).images, reference)
    for controlnet in (tiny_sd.controlnet_safetensors, tiny_sd.controlnet_bin_dir, tiny_sd.controlnet_pth["plain"]):
        other = SalientBackgroundPipeline(
            pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler,
            controlnet=load_controlnet(controlnet, unet=pipe.unet),
        )
        assert np.array_equal(_run(other, image, mask, prompts).images, reference), controlnet


def test_networks_receive_the_reference_tensors(pipe):
    """Capture every ControlNet and UNet call and compare with hand-made expectations."""
    image, object_mask = _photo(2), _handmade_object_mask()
    calls = {"controlnet": [], "unet": []}

    def capture(name):
        def hook(module, args, kwargs):
            calls[name].append((args, kwargs))

        return hook

    handles = [
        pipe.controlnet.register_forward_pre_hook(capture("controlnet"), with_kwargs=True),
        pipe.unet.register_forward_pre_hook(capture("unet"), with_kwargs=True),
    ]
    try:
        out = _run(pipe, image, object_mask, "a photo of a bottle", steps=3, seed=11, guidance_scale=7.5)
    finally:
        for h in handles:
            h.remove()
    assert len(calls["controlnet"]) == len(calls["unet"]) == 3

    # hand-made expectations -----------------------------------------------------------------------------------
    expected_latent_mask = torch.ones(8, 8)  # 1 = background to generate
    expected_latent_mask[1:5, 3:6] = 0.0  # object rows 8..39 (incl. the 0.7 band), cols 24..47; the 0.3 band is background
    expected_hint = (1.0 - object_mask)[:, None].expand(1, 3, SIZE, SIZE)  # soft: 0.3 and 0.7 survive
    masked = torch.zeros(1, 3, SIZE, SIZE)
    photo = image.permute(0, 3, 1, 2) * 2 - 1
    masked[..., 8:40, 24:48] = photo[..., 8:40, 24:48]  # object kept, background 0 (mid grey)
    g = torch.Generator().manual_seed(11)
    noise = torch.randn((1, 4, 8, 8), generator=g)  # drawn first ...
    with torch.no_grad():  # ... then the posterior sample of the masked photo, from the same generator
        masked_latents = pipe.vae.encode(masked).latent_dist.sample(generator=g) * 0.18215
    tokens = pipe.tokenizer(["", "a photo of a bottle"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = pipe.text_encoder(tokens.input_ids)[0]

    for step, ((c_args, c_kw), (u_args, u_kw)) in enumerate(zip(calls["controlnet"], calls["unet"])):
        x_c, x_u = c_args[0], u_args[0]
        assert x_c.shape == (2, 9, 8, 8)  # CFG: [uncond, cond]
        assert torch.equal(x_c, x_u), "the ControlNet must receive the UNet's 9-channel input"
        for half in (0, 1):
            assert torch.equal(x_u[half, 4], expected_latent_mask)
            torch.testing.assert_close(x_u[half, 5:9], masked_latents[0], atol=1e-5, rtol=0)
        hint = c_kw["controlnet_cond"]
        assert hint.shape == (2, 3, SIZE, SIZE)  # full pixel size
        torch.testing.assert_close(hint, torch.cat([expected_hint] * 2), atol=1e-6, rtol=0)
        assert torch.allclose(hint[:, :, 8:16, 24:48], torch.tensor(0.3))  # soft, not binarised
        assert torch.allclose(hint[:, :, 40:48, 24:48], torch.tensor(0.7))
        assert c_kw["conditioning_scale"] == 1.0
        torch.testing.assert_close(c_kw["encoder_hidden_states"], text, atol=1e-5, rtol=0)
        torch.testing.assert_close(u_kw["encoder_hidden_states"], text, atol=1e-5, rtol=0)
        assert u_kw["down_block_additional_residuals"] is not None and u_kw["mid_block_additional_residual"] is not None
        if step == 0:  # UniPC's first input is the seed's noise itself (init sigma 1, no input scaling)
            for half in (0, 1):
                torch.testing.assert_close(x_u[half, :4], noise[0], atol=1e-6, rtol=0)
    assert torch.equal(out.repaint_mask[0, 8:40, 24:48], torch.zeros(32, 24))
    assert out.repaint_mask.sum() == SIZE * SIZE - 32 * 24


def test_scale_zero_is_diffusers_sd2_inpainting_and_skips_the_controlnet(pipe):
    """ControlNet scale 0 = the SI2 baseline: exactly diffusers' stock inpainting pipeline on the same UNet."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from salient_background.models.generation.pipeline import SalientBackgroundPipeline

    photo = (_photo(3)[0].numpy() * 255).round().astype(np.uint8)
    object_mask = np.zeros((SIZE, SIZE), np.uint8)
    object_mask[20:44, 16:40] = 255
    image = torch.from_numpy(photo.astype(np.float32) / 255)[None]
    mask = torch.from_numpy(object_mask.astype(np.float32) / 255)[None]

    calls = []
    handle = pipe.controlnet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        ours0 = _run(pipe, image, mask, steps=4, seed=7, controlnet_conditioning_scale=0.0).images
    finally:
        handle.remove()
    assert calls == []  # not run at scale 0 (adding zero residuals is exact)
    ours1 = _run(pipe, image, mask, steps=4, seed=7, controlnet_conditioning_scale=1.0).images

    no_controlnet = SalientBackgroundPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    assert np.array_equal(_run(no_controlnet, image, mask, steps=4, seed=7).images, ours0)

    stock = StableDiffusionInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    stock.set_progress_bar_config(disable=True)
    stock_out = stock(
        "a photo of a bottle", image=Image.fromarray(photo), mask_image=Image.fromarray(255 - object_mask),
        height=SIZE, width=SIZE, num_inference_steps=4, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    assert float(np.abs(stock_out - ours0).max()) < 1e-4
    # and the ControlNet does change the picture
    assert float(np.abs(ours1 - ours0).max()) > 0.05


def test_seeds_and_batches(pipe):
    image, mask = _photo(4, 2), _handmade_object_mask()
    prompts = ["a photo of a swan", "a red chair in a garden"]
    batch = _run(pipe, image, mask, prompts, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    for i, seed in enumerate((1, 2)):  # each output is reproducible on its own, whatever it was batched with
        alone = _run(pipe, image[i : i + 1], mask, prompts[i], seed=seed).images
        assert float(np.abs(alone[0] - batch[i]).max()) < 1e-5
    again = _run(pipe, image, mask, prompts, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    assert np.array_equal(again, batch)
    several = _run(pipe, image[:1], mask, prompts[0], num_images_per_prompt=2,
                   generator=[torch.Generator().manual_seed(s) for s in (1, 9)]).images
    assert several.shape == (2, SIZE, SIZE, 3)
    assert float(np.abs(several[0] - batch[0]).max()) < 1e-5  # seed 1 again
    assert float(np.abs(several[1] - several[0]).max()) > 0.05  # another seed, another picture
    pil = _run(pipe, image[:1], mask, output_type="pil").images
    assert pil[0].size == (SIZE, SIZE) and pil[0].mode == "RGB"


def test_errors_name_the_fix(tiny_sd, pipe, tmp_path):
    from salient_background.models.generation.pipeline import SalientBackgroundPipeline
    from salient_background.models.generation.loading import load_pipeline

    with pytest.raises(InputError, match="multiple of 8"):
        _run(pipe, torch.rand(1, 60, 60, 3), torch.zeros(1, 60, 60))
    with pytest.raises(InputError, match="same size"):
        _run(pipe, torch.rand(1, 64, 64, 3), torch.zeros(1, 32, 32))
    with pytest.raises(InputError, match="generators"):
        _run(pipe, _photo(0, 2), _handmade_object_mask(), generator=[torch.Generator()])

    four_channel = build_tiny_unet(0)
    four_channel.register_to_config(in_channels=4)  # only the config matters for the check
    with pytest.raises(CheckpointError, match="512-inpainting-ema"):
        SalientBackgroundPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, four_channel, pipe.scheduler)

    with pytest.raises(CheckpointError, match="not found"):
        load_pipeline(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vae").mkdir()
    with pytest.raises(CheckpointError, match="'unet/'"):
        load_pipeline(str(tmp_path / "half"))
    with pytest.raises(CheckpointError, match="controlnet/"):
        load_pipeline(tiny_sd.si2_dir)  # an SI2 folder alone has no ControlNet
    baseline = load_pipeline(tiny_sd.si2_dir, use_controlnet=False)
    assert baseline.controlnet is None
