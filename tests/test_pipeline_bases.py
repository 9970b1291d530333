"""The diffusers pipeline on the SD1.5- and SDXL-inpainting bases, with tiny random models of each.

* SD1.5: our pipeline vs the reference ``pipeline_controlnet_inpaint.py`` (yahoo/photo-background-generation; it is
  base-agnostic) on the same random weights, as tests/test_pipeline_parity.py does for SD2, pinned in
  ``tests/golden/pipeline_parity_sd15.npz``. Regenerate (a local copy of the reference file, never committed):

      SALIENT_BG_REFERENCE_PIPELINE=/path/to/pipeline_controlnet_inpaint.py SALIENT_BG_WRITE_GOLDEN=1 \\
          python -m pytest tests/test_pipeline_bases.py -q -k sd15

* SDXL: our pipeline vs a step-by-step composition of diffusers' own UNet2DConditionModel, ControlNetModel, VAE,
  text encoders and scheduler written below (independent of our pipeline code).
* the base is read from the model; a ControlNet of another base is one error naming both.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from sb_testkit.bases import tiny_base_folder
from sb_testkit.diffusers_models import randomize_all_tensors
from test_pipeline_parity import GUIDANCE, PROMPTS, SEEDS, STEPS, TOLERANCE, parity_inputs, run_reference

GOLDEN_SD15 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "pipeline_parity_sd15.npz")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pipeline_folder(base: str, root, seed: int) -> str:
    """The tiny ``base`` model folder plus ``controlnet/``: a random salient ControlNet (``from_unet``, every tensor
    random, as the paper made it)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = os.path.join(str(root), base)
    shutil.copytree(tiny_base_folder(base), folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    controlnet = randomize_all_tensors(ControlNetModel.from_unet(unet, conditioning_channels=3), seed)
    controlnet.save_pretrained(os.path.join(folder, "controlnet"))
    return folder


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    return _pipeline_folder("sd15-inpainting", tmp_path_factory.mktemp("sd15"), seed=31)


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return _pipeline_folder("sdxl-inpainting", tmp_path_factory.mktemp("sdxl"), seed=41)


def _fingerprint(folder: str) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for sub in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors", "controlnet/diffusion_pytorch_model.safetensors"):
        state = load_file(os.path.join(folder, sub))
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_ours(folder: str, photos, masks, scale: float = 1.0, **kw) -> np.ndarray:
    from salient_background.models.generation.loading import load_pipeline

    pipe = load_pipeline(folder, **kw)
    return pipe(torch.from_numpy(photos.astype(np.float32) / 255.0), torch.from_numpy(masks.astype(np.float32) / 255.0),
                PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, controlnet_conditioning_scale=scale,
                generator=[torch.Generator().manual_seed(s) for s in SEEDS], show_progress=False).images


# ------------------------------------------------------------------------------------------------------ SD1.5
def test_sd15_pipeline_matches_reference_golden(sd15_folder):
    from salient_background.models.generation.loading import load_pipeline

    assert type(load_pipeline(sd15_folder).unet).__name__ == "UNet2DConditionModel"
    golden = np.load(GOLDEN_SD15)
    meta = json.loads(str(golden["meta"]))
    assert meta["weights_sha256"] == _fingerprint(sd15_folder), "the tiny SD1.5 models changed: regenerate the golden"
    ours = _run_ours(sd15_folder, golden["photos"], golden["object_masks"])
    diff = float(np.abs(ours - golden["reference_images"]).max())
    assert diff <= TOLERANCE, f"max |ours - reference| = {diff:.3g} > {TOLERANCE}"
    assert meta["max_abs_diff_scale1_vs_scale0"] > 100 * TOLERANCE  # the ControlNet matters here


@pytest.mark.skipif(not os.environ.get("SALIENT_BG_REFERENCE_PIPELINE"),
                    reason="set SALIENT_BG_REFERENCE_PIPELINE to a local copy of yahoo's pipeline_controlnet_inpaint.py")
def test_sd15_reference_live_and_regenerate_golden(sd15_folder):
    class Models:
        hf_pipeline_dir = sd15_folder

    photos, masks = parity_inputs()
    reference_file = os.environ["SALIENT_BG_REFERENCE_PIPELINE"]
    reference = run_reference(reference_file, Models, photos, masks)
    reference0 = run_reference(reference_file, Models, photos, masks, scale=0.0)
    diff = float(np.abs(_run_ours(sd15_folder, photos, masks) - reference).max())
    diff0 = float(np.abs(_run_ours(sd15_folder, photos, masks, scale=0.0) - reference0).max())
    print(f"SD1.5: max |ours - reference| = {diff:.3g} (scale 1.0), {diff0:.3g} (scale 0.0)")
    assert diff <= TOLERANCE and diff0 <= TOLERANCE
    if os.environ.get("SALIENT_BG_WRITE_GOLDEN") == "1":
        meta = {"weights_sha256": _fingerprint(sd15_folder), "prompts": PROMPTS, "seeds": SEEDS, "steps": STEPS,
                "guidance": GUIDANCE, "max_abs_diff_ours_vs_reference": diff, "max_abs_diff_scale0": diff0,
                "max_abs_diff_scale1_vs_scale0": float(np.abs(reference - reference0).max()),
                "torch": torch.__version__}
        np.savez_compressed(GOLDEN_SD15, photos=photos, object_masks=masks,
                            reference_images=reference.astype(np.float32), meta=np.array(json.dumps(meta)))


# ------------------------------------------------------------------------------------------------------ SDXL
def _diffusers_composition(folder: str, photos, masks, scale: float) -> np.ndarray:
    """SDXL inpainting + 9-channel ControlNet written out step by step with diffusers' own networks and UniPC."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UniPCMultistepScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    controlnet = ControlNetModel.from_pretrained(folder, subfolder="controlnet").eval()
    encoders = [CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval(),
                CLIPTextModelWithProjection.from_pretrained(os.path.join(folder, "text_encoder_2")).eval()]
    tokenizers = [CLIPTokenizer.from_pretrained(os.path.join(folder, s)) for s in ("tokenizer", "tokenizer_2")]
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as fh:
        scheduler = UniPCMultistepScheduler.from_config(json.load(fh))

    hidden, pooled = [], None
    for tok, enc in zip(tokenizers, encoders):
        ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        pooled, _ = out[0], hidden.append(out.hidden_states[-2])
    context = torch.cat(hidden, -1)
    context = torch.cat([torch.zeros_like(context), context])  # empty negative prompt: zeros (force_zeros_for_empty_prompt)
    pooled = torch.cat([torch.zeros_like(pooled), pooled])
    b, h, w = photos.shape[:3]
    time_ids = torch.tensor([[h, w, 0, 0, h, w]] * (2 * b), dtype=torch.float32)
    added = {"text_embeds": pooled, "time_ids": time_ids}

    image = torch.from_numpy(photos.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    soft = torch.from_numpy(masks.astype(np.float32) / 255.0)[:, None]
    repaint = (1.0 - soft >= 0.5).float()  # inverted, binarised
    masked = (image * 2 - 1) * (repaint < 0.5)
    hint = (1.0 - soft).repeat(1, 3, 1, 1)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    scheduler.set_timesteps(STEPS)
    latents = torch.cat([torch.randn((1, 4, h // 8, w // 8), generator=g) for g in gens]) * scheduler.init_noise_sigma
    masked_latents = torch.cat([vae.encode(masked[i:i + 1]).latent_dist.sample(generator=gens[i]) for i in range(b)])
    masked_latents = masked_latents * vae.config.scaling_factor
    mask_latent = torch.nn.functional.interpolate(repaint, size=(h // 8, w // 8))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            x = torch.cat([x, torch.cat([mask_latent] * 2), torch.cat([masked_latents] * 2)], 1)
            down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=torch.cat([hint] * 2),
                                   conditioning_scale=scale, added_cond_kwargs=added, return_dict=False)
            noise = unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            uncond, cond = noise.chunk(2)
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents).prev_sample
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    return (decoded * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_sdxl_pipeline_matches_a_composition_of_diffusers_networks(sdxl_folder):
    from salient_background.models.generation.pipeline_xl import SalientBackgroundXLPipeline

    photos, masks = parity_inputs()
    with torch.no_grad():
        ours = _run_ours(sdxl_folder, photos, masks)
        expected = _diffusers_composition(sdxl_folder, photos, masks, 1.0)
        baseline = _diffusers_composition(sdxl_folder, photos, masks, 0.0)
    diff = float(np.abs(ours - expected).max())
    assert diff <= 1e-5, f"max |ours - diffusers composition| = {diff:.3g}"
    assert float(np.abs(expected - baseline).max()) > 100 * 1e-5  # the ControlNet (and its added cond) matters here
    from salient_background.models.generation.loading import load_pipeline

    assert isinstance(load_pipeline(sdxl_folder), SalientBackgroundXLPipeline)


def test_sdxl_vae_stays_float32_in_half_precision(sdxl_folder):
    from salient_background.models.generation.loading import load_pipeline

    pipe = load_pipeline(sdxl_folder, dtype=torch.bfloat16, device="cpu")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    photos, masks = parity_inputs()
    out = pipe(photos[:1], masks[:1], "a lake", num_inference_steps=1, show_progress=False).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------- base of the model
def test_the_base_is_read_from_the_model(sd15_folder, sdxl_folder, tiny_sd):
    from salient_background.models.bases import base_of_model
    from salient_background.models.networks.controlnet_checkpoint import controlnet_base_cheaply

    assert base_of_model(sd15_folder).name == "sd15-inpainting"
    assert base_of_model(sdxl_folder).name == "sdxl-inpainting"
    assert base_of_model(tiny_sd.si2_dir).name == "sd2-inpainting"
    assert controlnet_base_cheaply(os.path.join(sd15_folder, "controlnet")).name == "sd15-inpainting"
    assert controlnet_base_cheaply(os.path.join(sdxl_folder, "controlnet")).name == "sdxl-inpainting"
    # a lone safetensors file without a config: read from its header
    assert controlnet_base_cheaply(tiny_sd.controlnet_safetensors).name == "sd2-inpainting"


@pytest.mark.parametrize("model, controlnet, names", [
    ("sd2", "sd15", ("Stable Diffusion 1.5 inpainting", "Stable Diffusion 2 inpainting")),
    ("sd15", "sdxl", ("Stable Diffusion XL inpainting", "Stable Diffusion 1.5 inpainting")),
    ("sdxl", "sd2", ("Stable Diffusion 2 inpainting", "Stable Diffusion XL inpainting")),
])
def test_a_controlnet_of_another_base_is_one_error_naming_both(model, controlnet, names, sd15_folder, sdxl_folder,
                                                               tiny_sd, monkeypatch):
    from salient_background.models.errors import InputError
    from salient_background.models.generation import loading

    folders = {"sd2": tiny_sd.si2_dir, "sd15": sd15_folder, "sdxl": sdxl_folder}
    controlnets = {"sd2": tiny_sd.controlnet_safetensors, "sd15": os.path.join(sd15_folder, "controlnet"),
                   "sdxl": os.path.join(sdxl_folder, "controlnet")}
    monkeypatch.setattr(loading, "load_components", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(InputError) as err:
        loading.load_pipeline(si2_path=folders[model], controlnet_path=controlnets[controlnet])
    assert all(name in str(err.value) for name in names)


# ----------------------------------------------------------------------------------------------- the command
def _one_photo(root):
    from PIL import Image

    photos, masks = parity_inputs()
    (root / "photos").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(photos[0]).save(root / "photos" / "p.png")
    Image.fromarray(masks[0]).save(root / "masks" / "p.png")
    return root / "photos", root / "masks"


def _args(*argv):
    from salient_background import cli

    return cli.build_parser().parse_args(["generate", *map(str, argv)])


def test_generate_takes_base_model_and_si2_as_one_option(sd15_folder, tmp_path):
    a = _args("x.png", "--output-dir", tmp_path, "--base-model", sd15_folder)
    b = _args("x.png", "--output-dir", tmp_path, "--si2", sd15_folder)
    assert a.base_model == b.base_model == sd15_folder


@pytest.mark.parametrize("base, size", [("sd2", 512), ("sd15", 512), ("sdxl", 1024)])
def test_generate_frames_at_the_base_native_size_unless_size_is_given(base, size, sd15_folder, sdxl_folder, tiny_sd,
                                                                      tmp_path):
    from salient_background.commands.generate_checks import validate_options

    photos, masks = _one_photo(tmp_path)
    folder = {"sd2": tiny_sd.hf_pipeline_dir, "sd15": sd15_folder, "sdxl": sdxl_folder}[base]
    common = [photos, "--output-dir", tmp_path / "o", "--prompt", "x", "--masks", masks, "--pipeline", folder]
    args = _args(*common)
    validate_options(args)
    assert args.size == size
    args = _args(*common, "--size", 64)
    validate_options(args)
    assert args.size == 64


def test_generate_sd15_and_sdxl_end_to_end_record_the_size(sd15_folder, sdxl_folder, tmp_path):
    from salient_background import cli

    photos, masks = _one_photo(tmp_path)
    for name, folder in (("sd15", sd15_folder), ("sdxl", sdxl_folder)):
        out = tmp_path / name
        assert cli.main(["generate", str(photos), "--base-model", folder, "--controlnet",
                         os.path.join(folder, "controlnet"), "--masks", str(masks), "--prompt", "a lake", "--size", "64",
                         "--steps", "2", "--no-progress", "--device", "cpu", "--output-dir", str(out)]) == 0
        meta = json.loads((out / "manifest.json").read_text())
        assert meta["rows"][0]["settings"]["size"] == 64
        assert (out / "generated" / "p_s0.png").is_file()


def test_generate_refuses_a_controlnet_of_another_base_before_loading(sd15_folder, tiny_sd, tmp_path, monkeypatch,
                                                                     capsys):
    from salient_background import cli
    from salient_background.models.generation import loading

    monkeypatch.setattr(loading, "pipeline_from_plan", lambda *a, **k: pytest.fail("models loaded before the check"))
    photos, masks = _one_photo(tmp_path)
    code = cli.main(["generate", str(photos), "--base-model", tiny_sd.si2_dir, "--controlnet",
                     os.path.join(sd15_folder, "controlnet"), "--masks", str(masks), "--prompt", "x",
                     "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "Stable Diffusion 1.5 inpainting" in err and "Stable Diffusion 2 inpainting" in err
    assert not (tmp_path / "o").exists()


def test_the_download_rows_hold_every_folder_the_pipeline_reads():
    from salient_background.models.model_files.model_registry import select

    for name, folders in (("sd15-diffusers", {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}),
                          ("sdxl", {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2",
                                    "tokenizer_2"})):
        rows = select([name])
        assert {m.filename.split("/")[1] for m in rows if m.filename.count("/") == 2} == folders
        assert all(m.sha256 is None and m.revision is None for m in rows)  # nothing invented: reported unverified
