"""The trainer for every inpainting base: SD1.5 and SDXL inpainting next to SD2 (the other tests' base).

Tiny random models in each base's real diffusers folder layout (``sb_testkit.bases``) go through what a user runs:
prepare -> train -> resume (bitwise) -> export -> load with the loader -> one UNet + ControlNet denoising step on
the loaded files. Also: the base read from the folder (and a wrong ``--base`` refused), SDXL's time ids and two text
encoders, what ComfyUI can build (checked on the full-size configs of the released models, without weights).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sb_testkit.bases import SDXL_TE2_WIDTH, tiny_base_folder
from sb_testkit.diffusers_models import TINY_IMAGE_SIZE
from sb_testkit.training_runs import train_in_process
from test_training import RedSegmenter, make_photo_folder

from salient_background.models.errors import InputError
from salient_background.models.bases import BASES, base_for_pretrained_folder
from salient_background.training import data as tdata

RES = TINY_IMAGE_SIZE
TINY_CONDITIONING = (8, 8, 16, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from salient_background.training.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("bases_data")
    make_photo_folder(str(root / "photos"), n=4)
    prepare_dataset(str(root / "dataset"), image_dirs=[str(root / "photos")], segmenter=RedSegmenter(), progress=False)
    return str(root / "dataset")


def _config(model, data, out, **kw):
    from salient_background.training.train import TrainConfig

    settings = dict(data=data, base_model=tiny_base_folder(model), output_dir=str(out), resolution=RES,
                    conditioning_channels=TINY_CONDITIONING, batch_size=2, learning_rate=1e-3,
                    checkpointing_steps=0, report_to="none", log_every=1000, seed=0)
    settings.update(kw)
    return TrainConfig(**settings)


# ------------------------------------------------------------------------------------------------ the base
def test_the_base_is_read_from_the_folder_and_a_wrong_one_is_refused(dataset_dir, tmp_path):
    for name in BASES:
        assert base_for_pretrained_folder(tiny_base_folder(name)).name == name
    with pytest.raises(InputError, match="--base sdxl-inpainting was given, but .* Stable Diffusion 1.5 inpainting"):
        train_in_process(_config("sd15-inpainting", dataset_dir, tmp_path / "run", base="sdxl-inpainting", max_train_steps=1))
    assert not os.path.exists(tmp_path / "run")  # refused before anything was written
    # model_index.json and unet/config.json must agree
    folder = tmp_path / "mixed"
    import shutil

    shutil.copytree(tiny_base_folder("sd15-inpainting"), folder)
    index = json.load(open(folder / "model_index.json"))
    json.dump({**index, "_class_name": "StableDiffusionXLInpaintPipeline"}, open(folder / "model_index.json", "w"))
    with pytest.raises(InputError, match="model_index.json names StableDiffusionXLInpaintPipeline"):
        base_for_pretrained_folder(str(folder))
    # a text-to-image UNet is no inpainting base
    unet_cfg = json.load(open(folder / "unet" / "config.json"))
    json.dump({**unet_cfg, "in_channels": 4}, open(folder / "unet" / "config.json", "w"))
    with pytest.raises(InputError, match="takes 4 input channels"):
        base_for_pretrained_folder(str(folder))


def test_resuming_with_another_base_and_fine_tuning_another_bases_controlnet_are_refused(tiny_sd, dataset_dir,
                                                                                          tmp_path):
    train_in_process(_config("sd15-inpainting", dataset_dir, tmp_path / "run", max_train_steps=2, stop_after_steps=1))
    with pytest.raises(InputError, match="holds a run for sd15-inpainting, but the base model is sdxl-inpainting"):
        train_in_process(_config("sdxl-inpainting", dataset_dir, tmp_path / "run", max_train_steps=2, resume_from="latest"))
    with pytest.raises(InputError, match="is for Stable Diffusion 2 inpainting, but the base model is Stable "
                                         "Diffusion 1.5 inpainting"):
        train_in_process(_config("sd15-inpainting", dataset_dir, tmp_path / "ft", max_train_steps=1,
                       controlnet=tiny_sd.controlnet_dir))


def test_sdxl_vae_runs_in_fp32_under_fp16_unless_another_vae_is_given():
    from salient_background.training.base_models import vae_dtype_for
    from salient_background.training.train import TrainConfig

    xl, sd2 = BASES["sdxl-inpainting"], BASES["sd2-inpainting"]
    assert vae_dtype_for(xl, TrainConfig(), torch.float16) == torch.float32
    assert vae_dtype_for(xl, TrainConfig(vae="/some/fp16-fix"), torch.float16) == torch.float16
    assert vae_dtype_for(xl, TrainConfig(), torch.bfloat16) == torch.bfloat16  # bf16 has fp32's range
    assert vae_dtype_for(sd2, TrainConfig(), torch.float16) == torch.float16


# ------------------------------------------------------------------------------------------------ SDXL inputs
def test_sdxl_samples_carry_each_crops_time_ids(dataset_dir):
    """(original height, width, crop top, left, R, R): the short side goes to the resolution, then the crop."""
    import numpy as np
    from PIL import Image

    rows = tdata.read_manifest(dataset_dir)
    ds = tdata.SalientTrainingDataset(rows, tdata.SampleConfig(resolution=RES, resize_to=RES, time_ids=True))
    for index in range(len(rows)):
        sample = ds[(0, index, index)]
        h, w, top, left, r1, r2 = (int(v) for v in sample["time_ids"])
        photo = Image.open(rows[index]["image"]).convert("RGB")
        assert (w, h) == photo.size == (80, 96) and r1 == r2 == RES and left == 0 and 0 <= top <= 76 - RES
        resized = tdata.resize_short_side(photo, RES, Image.BOX, Image.BICUBIC)
        crop = np.asarray(resized.crop((left, top, left + RES, top + RES)), dtype=np.float32) / 255
        assert torch.allclose(sample["pixel_values"], torch.from_numpy(crop).permute(2, 0, 1) * 2 - 1)
    tops = {int(ds[(e, 0, e)]["time_ids"][2]) for e in range(6)}
    assert len(tops) > 1  # the crop (and so its offset) is random
    # SD2 samples stay as they were: no time ids
    assert "time_ids" not in tdata.SalientTrainingDataset(rows, tdata.SampleConfig(resolution=RES, resize_to=80))[0]


def test_sdxl_text_conditioning_is_both_encoders_and_the_cache_is_exact():
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from salient_background.models.generation.text_encoding import encode_texts_xl, tokenize
    from salient_background.training.caches import TextEmbeddingCache

    folder = tiny_base_folder("sdxl-inpainting")
    encoders = [CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval(),
                CLIPTextModelWithProjection.from_pretrained(os.path.join(folder, "text_encoder_2")).eval()]
    tokenizers = [CLIPTokenizer.from_pretrained(os.path.join(folder, t)) for t in ("tokenizer", "tokenizer_2")]
    texts = ["a swan in the garden", ""]
    with torch.no_grad():
        context, pooled = encode_texts_xl(tokenizers, encoders, texts)
        one = encoders[0](tokenize(tokenizers[0], texts).input_ids, output_hidden_states=True)
        two = encoders[1](tokenize(tokenizers[1], texts).input_ids, output_hidden_states=True)
    assert context.shape == (2, 77, 32) and pooled.shape == (2, SDXL_TE2_WIDTH)
    assert torch.equal(context, torch.cat([one.hidden_states[-2], two.hidden_states[-2]], -1))  # penultimate layers
    assert torch.equal(pooled, two.text_embeds)  # text_encoder_2's projected pooled embedding
    cache = TextEmbeddingCache(encoders, tokenizers, texts, "cpu", torch.float32)
    assert torch.equal(cache.lookup(texts), context) and torch.equal(cache.lookup_pooled(texts), pooled)


# ------------------------------------------------------------------------------------------------ end to end
def _denoising_step(base, exported, trained, weights, time_ids=None):
    """One UNet + ControlNet step on the exported files, loaded as a user loads them; compared with ``trained``
    holding ``weights`` (the EMA weights the run exported)."""
    import copy

    from diffusers import UNet2DConditionModel

    from salient_background.models.networks.controlnet_checkpoint import build_diffusers_controlnet, controlnet_base

    assert controlnet_base(exported).name == base
    controlnet = build_diffusers_controlnet(exported)  # the default width: the file's base's
    unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_base_folder(base), "unet")).eval()
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 9, 8, 8, generator=gen), torch.rand(2, 3, RES, RES, generator=gen)
    ctx, t = torch.randn(2, 77, 32, generator=gen), torch.tensor([10, 700])
    extra = {}
    if time_ids is not None:
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, SDXL_TE2_WIDTH, generator=gen),
                                       "time_ids": time_ids}}
    with torch.no_grad():
        down, mid = controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False, **extra)
        reference = copy.deepcopy(trained).eval()
        reference.load_state_dict(weights)
        ref_down, ref_mid = reference(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False,
                                           **extra)
        assert torch.equal(mid, ref_mid) and all(torch.equal(a, b) for a, b in zip(down, ref_down))
        assert float(mid.abs().max()) > 0  # trained: the zero convolutions moved
        eps = unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=list(down),
                   mid_block_additional_residual=mid, return_dict=False, **extra)[0]
        plain = unet(x, t, encoder_hidden_states=ctx, return_dict=False, **extra)[0]
    assert eps.shape == (2, 4, 8, 8) and float((eps - plain).abs().max()) > 0  # the ControlNet steers the UNet
    return controlnet, extra


@pytest.mark.parametrize("base", ["sd15-inpainting", "sdxl-inpainting"])
def test_train_resume_export_load_and_denoise(base, dataset_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from salient_background.training.export import export_checkpoint

    kw = dict(max_train_steps=3, checkpointing_steps=3, ema_decay=0.9, latent_cache=True, latent_cache_crops=2)
    full = train_in_process(_config(base, dataset_dir, tmp_path / "full", **kw))
    part = train_in_process(_config(base, dataset_dir, tmp_path / "split", stop_after_steps=1, **kw))
    assert part.global_step == 1 and part.export_dir is None
    resumed = train_in_process(_config(base, dataset_dir, tmp_path / "split", resume_from="latest", **kw))
    assert [s for s, _ in resumed.losses] == [2, 3] and [l for _, l in full.losses[1:]] == [l for _, l in resumed.losses]
    a, b = full.controlnet.state_dict(), resumed.controlnet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in a)
    run_config = json.load(open(tmp_path / "full" / "train_config.json"))
    assert run_config["base"] == base and run_config["resize_to"] == (RES if base == "sdxl-inpainting" else 768)

    # the latent cache holds what the base needs per crop: for SDXL the time ids it was encoded with
    cached = load_file(str(tmp_path / "full" / "latent_cache" / "00000001.safetensors"))
    ds = tdata.SalientTrainingDataset(tdata.read_manifest(dataset_dir), tdata.SampleConfig(
        resolution=RES, resize_to=run_config["resize_to"], latent_cache_crops=2, time_ids=base == "sdxl-inpainting"))
    assert cached["latent_mean"].shape == (2, 4, RES // 8, RES // 8)
    if base == "sdxl-inpainting":
        assert torch.equal(cached["time_ids"][1], ds.load_crop_with_geometry(1, ds.cache_crop_rng(1, 1))[2])
        assert "base" in json.load(open(tmp_path / "full" / "latent_cache" / "cache_config.json"))
    else:
        assert "time_ids" not in cached

    exported = export_checkpoint(str(tmp_path / "split"), str(tmp_path / "export"), ema=True)
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["salient_base"] == base
    with safe_open(os.path.join(exported, "diffusion_pytorch_model.safetensors"), "pt") as fh:
        assert fh.metadata()["salient_base"] == base
    assert json.load(open(os.path.join(full.export_dir, "config.json")))["salient_base"] == base
    time_ids = torch.tensor([[96.0, 80.0, 4.0, 0.0, 64.0, 64.0], [80.0, 96.0, 0.0, 8.0, 64.0, 64.0]])
    _denoising_step(base, full.export_dir, full.controlnet, full.ema.shadow,
                    time_ids if base == "sdxl-inpainting" else None)
    # the EMA export holds the EMA weights
    ema = load_file(os.path.join(exported, "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema[k], full.ema.shadow[k]) for k in ema)


def test_sdxl_controlnet_uses_the_added_conditioning_and_the_loader_names_its_base(dataset_dir, tmp_path):
    from salient_background.models.errors import CheckpointError
    from salient_background.models.networks.controlnet_checkpoint import load_controlnet_state_dict

    result = train_in_process(_config("sdxl-inpainting", dataset_dir, tmp_path / "run", max_train_steps=2,
                            text_embedding_cache=False, learning_rate=1e-2))
    controlnet = result.controlnet.eval()
    gen = torch.Generator().manual_seed(1)
    x, hint, ctx = torch.randn(1, 9, 8, 8, generator=gen), torch.rand(1, 3, RES, RES, generator=gen), torch.randn(1, 77, 32)
    pooled = torch.randn(1, SDXL_TE2_WIDTH, generator=gen)
    outs = []
    with torch.no_grad():
        for time_ids in ([96.0, 80.0, 0.0, 0.0, 64.0, 64.0], [512.0, 512.0, 32.0, 0.0, 64.0, 64.0]):
            added = {"text_embeds": pooled, "time_ids": torch.tensor([time_ids])}
            outs.append(controlnet(x, 5, encoder_hidden_states=ctx, controlnet_cond=hint, added_cond_kwargs=added,
                                   return_dict=False)[1])
    assert float((outs[0] - outs[1]).abs().max()) > 0  # the size/crop conditioning reaches the ControlNet
    state, config = load_controlnet_state_dict(result.export_dir)
    assert config["salient_base"] == "sdxl-inpainting" and "add_embedding.linear_1.weight" in state
    with pytest.raises(CheckpointError, match=r"it is for Stable Diffusion XL inpainting \(sdxl-inpainting\), not "
                                              "Stable Diffusion 2 inpainting"):
        load_controlnet_state_dict(result.export_dir, base="sd2-inpainting")
    # without the record (weights alone, e.g. renamed elsewhere): read from the weights
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "bare.safetensors"))
    from salient_background.models.networks.controlnet_checkpoint import controlnet_base

    assert controlnet_base(str(tmp_path / "bare.safetensors")).name == "sdxl-inpainting"


def test_controlnet_base_from_weights_of_the_released_widths(tiny_sd):
    """The paper's file has no record: its base comes from the weights (context width, added conditioning)."""
    from salient_background.models.networks.controlnet_checkpoint import controlnet_base

    def weights(width, added=False, linear=True):
        sd = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, width),
              "down_blocks.1.attentions.0.proj_in.weight": torch.zeros((4, 4) if linear else (4, 4, 1, 1)),
              "conv_in.weight": torch.zeros(320, 9, 3, 3), "controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3)}
        if added:
            sd["add_embedding.linear_1.weight"] = torch.zeros(4, 2816)
        return sd

    assert controlnet_base(weights(1024)).name == "sd2-inpainting"
    assert controlnet_base(weights(768, linear=False)).name == "sd15-inpainting"
    assert controlnet_base(weights(2048, added=True)).name == "sdxl-inpainting"
    # ComfyUI's key names, under the prefix of lllyasviel-style files
    comfy = {"control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 2048),
             "control_model.label_emb.0.0.weight": torch.zeros(4, 2816)}
    assert controlnet_base(comfy).name == "sdxl-inpainting"
    assert controlnet_base(tiny_sd.controlnet_dir).name == "sd2-inpainting"  # tiny widths: by structure


# ------------------------------------------------------------------------------------------------ ComfyUI
def _full_size_controlnet_config(base, **controlnet_kw):
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    from salient_background.models.generation.base_configs import full_size_configs

    unet_config = full_size_configs(base)["unet"]
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        kw = dict(conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256))
        kw.update(controlnet_kw)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False, **kw)
    return dict(controlnet.config), dict(unet.config)


def test_comfy_constraints_on_the_released_models_configs():
    from salient_background.models.networks.comfy_constraints import comfy_buildable_problems, comfy_family
    from salient_background.training.base_models import check_comfy_buildable

    families = {"sd2-inpainting": "SD20", "sd15-inpainting": "SD15", "sdxl-inpainting": "SDXL"}
    for base, family in families.items():
        config, unet_config = _full_size_controlnet_config(base)
        assert comfy_buildable_problems(config) == [] and comfy_family(config) == family == BASES[base].comfy_model
        check_comfy_buildable(config, unet_config)  # the trainer accepts it
    # what the trainer refuses at start
    config, unet_config = _full_size_controlnet_config("sd2-inpainting", conditioning_embedding_out_channels=(8, 8, 16, 16))
    assert any("hint encoder is fixed" in p for p in comfy_buildable_problems(config))
    with pytest.raises(InputError, match="ComfyUI could not build the ControlNet"):
        check_comfy_buildable(config, unet_config)
    config, _ = _full_size_controlnet_config("sd15-inpainting")
    assert any("heads" in p for p in comfy_buildable_problems({**config, "attention_head_dim": [5, 10, 20, 20]}))
    assert any("recognises no model family" in p
               for p in comfy_buildable_problems({**config, "use_linear_projection": True, "cross_attention_dim": 768}))
    config, _ = _full_size_controlnet_config("sdxl-inpainting")
    assert any("text_time embedding must be SDXL's" in p
               for p in comfy_buildable_problems({**config, "addition_time_embed_dim": 128}))
    assert any("norm_num_groups" in p for p in comfy_buildable_problems({**config, "norm_num_groups": 16}))


def test_the_trainer_refuses_an_unbuildable_controlnet_before_reading_weights(dataset_dir, tmp_path):
    """A full-size base whose folder has only configs: the refusal comes before any weight is looked for."""
    from salient_background.models.generation.base_configs import full_size_configs

    folder = tmp_path / "sd15"
    (folder / "unet").mkdir(parents=True)
    json.dump(full_size_configs("sd15-inpainting")["unet"], open(folder / "unet" / "config.json", "w"))
    cfg = _config("sd15-inpainting", dataset_dir, tmp_path / "run", base_model=str(folder), max_train_steps=1)
    with pytest.raises(InputError, match="hint encoder is fixed at \\[16, 32, 96, 256\\]"):
        train_in_process(cfg)


# ------------------------------------------------------------------------------------------------ distributed
def test_sdxl_two_processes_equal_one_process(dataset_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo), batch 1 each == one process with batch 2, for SDXL's added conditioning."""
    from safetensors.torch import load_file

    common = ["--data", dataset_dir, "--base-model", tiny_base_folder("sdxl-inpainting"), "--resolution", str(RES),
              "--conditioning-channels", *map(str, TINY_CONDITIONING), "--max-train-steps", "2", "--learning-rate",
              "1e-3", "--checkpointing-steps", "0", "--report-to", "none", "--record-samples"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(30500 + os.getpid() % 1000), "-m", "salient_background.training", "train", *common,
                          "--batch-size", "1", "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    train_in_process(_config("sdxl-inpainting", dataset_dir, tmp_path / "one", max_train_steps=2, record_samples=True))
    seen = {r: [json.loads(line) for line in open(tmp_path / "two" / f"samples-rank{r}.jsonl")] for r in (0, 1)}
    single = [json.loads(line) for line in open(tmp_path / "one" / "samples-rank0.jsonl")]
    for a, b, c in zip(seen[0], seen[1], single):
        assert a["index"] + b["index"] == c["index"] and abs((a["loss"] + b["loss"]) / 2 - c["loss"]) < 1e-5
    w2 = load_file(str(tmp_path / "two" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    moved = max(float(w1[k].abs().max()) for k in w1 if k.startswith(("controlnet_down_blocks", "controlnet_mid_block")))
    # Equal up to float summation order, which Adam's normalisation amplifies for near-zero gradients: a gradient of
    # ~1e-9 whose last bits differ can take a step of up to lr either way. So a handful of single weights may differ
    # (measured: 5 of 667,368 by more than 5 % of the distance moved, the worst by 11 %), while a sharding fault (a
    # rank's gradients not averaged, another sample order) moves most of them. The losses above agree to 1e-5.
    diff = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
    assert moved > 1e-4
    assert float((diff > 0.05 * moved).float().mean()) < 1e-4 and float(diff.mean()) < 1e-4 * moved


@pytest.mark.parametrize("switches", [dict(optimizer_in_backward=True), dict(gradient_checkpointing="all"),
                                      dict(text_embedding_cache=False)])
def test_low_memory_switches_train_the_same_sdxl_weights(switches, dataset_dir, tmp_path):
    kw = dict(max_train_steps=2, learning_rate=1e-3, max_grad_norm=1e-3)
    plain = train_in_process(_config("sdxl-inpainting", dataset_dir, tmp_path / "plain", **kw))
    lean = train_in_process(_config("sdxl-inpainting", dataset_dir, tmp_path / "lean", **switches, **kw))
    a, b = plain.controlnet.state_dict(), lean.controlnet.state_dict()
    if "text_embedding_cache" in switches:  # the encoders see other batch sizes: equal up to float rounding
        assert [l for _, l in plain.losses] == pytest.approx([l for _, l in lean.losses], rel=1e-5)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
        return
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: the same arithmetic, in another order of memory use
    assert [l for _, l in plain.losses] == [l for _, l in lean.losses]


@pytest.mark.parametrize("base", ["sd15-inpainting", "sdxl-inpainting"])
def test_validation_images_for_every_base(base, dataset_dir, tmp_path):
    result = train_in_process(_config(base, dataset_dir, tmp_path / "run", max_train_steps=1, validation_steps=1,
                            validation_rows=1, validation_inference_steps=1, learning_rate=1e-2))
    path = tmp_path / "run" / "validation" / "step-000001.png"
    assert result.global_step == 1 and path.is_file()
    from PIL import Image

    assert Image.open(path).size == (4 * RES, RES)  # photo | hint | baseline | ControlNet
