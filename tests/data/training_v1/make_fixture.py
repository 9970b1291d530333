"""Make the ``training_v1`` fixture: a training run as the trainer of December 2026 left it on disk.

Run from the repository root (``python tests/data/training_v1/make_fixture.py``); it rewrites this folder. What it holds:

* ``base_model/``: a micro SD2-inpainting folder (random weights, real layout; far smaller than the test kit's tiny
  models, so the committed files stay small);
* ``dataset/``: four synthetic photos, their object masks and ``manifest.jsonl``;
* ``run/``: the output folder of a 3-step run stopped after 2 steps (``stop_after_steps``): the checkpoint
  ``checkpoints/checkpoint-2`` (accelerate's model/optimizer/scheduler/RNG files, ``train_state.json``, the EMA weights,
  the ControlNet config), ``train_config.json`` and the latent cache ``latent_cache/`` (its ``cache_config.json`` names
  the absolute paths of the machine that made it; the test points them at the fixture's new place);
* ``expected.json``: the step-3 loss the trainer computed when resuming this run to step 3;
* ``expected_weights.safetensors``: the final ControlNet and EMA weights of that resume and the caption-embedding table
  it built (that table lives in memory only). These were first pinned as sha256 digests; a digest holds only on the
  processor that made it (the math library picks its kernels per processor, and the last bits move), so the pinned
  tensors are compared within float rounding instead. They were recomputed on 2026-12-07 by resuming the committed
  checkpoint with the trainer of that day, which had matched the digests on the machine that made them.

``tests/test_training_formats.py`` resumes the copy with today's code and compares.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, TESTS)

RESOLUTION = 32
RESIZE_TO = 40
CONDITIONING_CHANNELS = (4, 4, 4, 4)
CAPTIONS = [["red bottle on a wooden table"], ["a swan in the garden", "a photo"], [], ["red chair in a kitchen"]]


def train_kwargs(root: str) -> dict:
    """The run's settings (paths under ``root``, the fixture folder or a copy of it)."""
    return dict(data=os.path.join(root, "dataset"), base_model=os.path.join(root, "base_model"),
                output_dir=os.path.join(root, "run"), resolution=RESOLUTION, resize_to=RESIZE_TO,
                conditioning_channels=CONDITIONING_CHANNELS, batch_size=2, learning_rate=1e-3, max_train_steps=3,
                checkpointing_steps=2, checkpoints_total_limit=2, ema_decay=0.9, latent_cache=True,
                latent_cache_crops=2, text_embedding_cache=True, report_to="none", log_every=1000, seed=7,
                empty_caption_prob=0.25)


def build_base_model(folder: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sb_testkit import diffusers_models as dm

    unet_cfg = dict(dm.tiny_unet_config(), sample_size=RESOLUTION // 8, block_out_channels=(4, 8), norm_num_groups=4,
                    attention_head_dim=(1, 2), cross_attention_dim=8)
    vae_cfg = dict(dm.tiny_vae_config(), block_out_channels=(4, 4, 4, 4), norm_num_groups=4, sample_size=RESOLUTION)
    te_cfg = dm.tiny_text_encoder_config()
    te_cfg.hidden_size, te_cfg.intermediate_size, te_cfg.num_hidden_layers = 8, 8, 1
    te_cfg.num_attention_heads, te_cfg.projection_dim = 2, 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    torch.manual_seed(1)
    vae = AutoencoderKL(**vae_cfg).eval()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(te_cfg).eval()
    dm.save_si2_folder(folder, unet, vae, text_encoder)


def build_dataset(folder: str) -> None:
    from PIL import Image

    from sb_testkit.images import object_on_background
    from salient_background.training.data import write_manifest

    rows = []
    for i, captions in enumerate(CAPTIONS):
        h, w = (48, 40) if i % 2 else (40, 44)
        image, mask = object_on_background(h, w, seed=i)
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
        Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(os.path.join(folder, "images", f"{i}.png"))
        Image.fromarray((mask.numpy() * 255).round().astype(np.uint8), mode="L").save(
            os.path.join(folder, "masks", f"{i}.png"))
        rows.append({"image": f"images/{i}.png", "mask": f"masks/{i}.png", "captions": captions, "width": w,
                     "height": h, "mask_area": round(float(mask.mean()), 6)})
    write_manifest(os.path.join(folder, "manifest.jsonl"), rows)


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def run(config) -> object:
    from salient_background.training.train import train

    reset_accelerate()
    try:
        return train(config)
    finally:
        reset_accelerate()


def caption_table(root: str) -> dict:
    """The caption-embedding table the trainer builds for this dataset (fp32, CPU), caption -> embedding."""
    from salient_background.models.generation.loading import load_components
    from salient_background.training.data import read_manifest
    from salient_background.training.caches import TextEmbeddingCache

    _, text_encoder, tokenizer, _, _ = load_components(os.path.join(root, "base_model"))
    captions = [c for r in read_manifest(os.path.join(root, "dataset")) for c in r["captions"] if c]
    cache = TextEmbeddingCache(text_encoder, tokenizer, captions, "cpu", torch.float32)
    return {t: cache.table[i].contiguous() for t, i in cache.index.items()}


def final_tensors(result, root: str) -> dict:
    """What a resume must reproduce, by name: the ControlNet, its EMA and the caption table (``expected_weights``)."""
    tensors = {f"controlnet.{k}": v.detach().float().contiguous() for k, v in result.controlnet.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().float().contiguous() for k, v in result.ema.shadow.items()})
    tensors.update({f"caption.{t}": v for t, v in caption_table(root).items()})
    return tensors


def main() -> None:
    from salient_background.training.train import TrainConfig

    torch.set_num_threads(1)
    for name in ("base_model", "dataset", "run"):
        shutil.rmtree(os.path.join(HERE, name), ignore_errors=True)
    build_base_model(os.path.join(HERE, "base_model"))
    build_dataset(os.path.join(HERE, "dataset"))
    first = run(TrainConfig(stop_after_steps=2, **train_kwargs(HERE)))
    assert first.global_step == 2
    # continue a copy with this code: what a resume must reproduce
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "training_v1")
        shutil.copytree(HERE, copy, ignore=shutil.ignore_patterns("*.py", "expected.json", "__pycache__"))
        relocate_latent_cache(copy)
        resumed = run(TrainConfig(resume_from="latest", **train_kwargs(copy)))
        expected = {
            "made_with": {"torch": torch.__version__},
            "resumed_steps": [s for s, _ in resumed.losses],
            "losses": [loss for _, loss in resumed.losses],
        }
        save_file(final_tensors(resumed, copy), os.path.join(HERE, "expected_weights.safetensors"))
    with open(os.path.join(HERE, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=2)
    print(json.dumps(expected, indent=2))


def relocate_latent_cache(root: str) -> None:
    """The latent cache is keyed on absolute paths; point them at ``root`` as if the run had been made there."""
    from salient_background.training.data import read_manifest

    path = os.path.join(root, "run", "latent_cache", "cache_config.json")
    with open(path) as fh:
        signature = json.load(fh)
    rows = read_manifest(os.path.join(root, "dataset"))
    signature.update(base_model=os.path.abspath(os.path.join(root, "base_model")), first_row=rows[0]["image"],
                     last_row=rows[-1]["image"])
    with open(path, "w") as fh:
        json.dump(signature, fh, indent=2)


if __name__ == "__main__":
    main()
