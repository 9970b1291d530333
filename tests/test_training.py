"""The training subpackage on tiny random SD2-inpainting models and synthetic photos made here.

Photos: a bright red disk (the object) on a smooth random texture, with sidecar captions; the "salient model" of the
data-preparation tests is a colour threshold that finds exactly that disk (so mask areas are known by hand).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sb_testkit.diffusers_models import CONTROLNET_CONDITIONING_CHANNELS, TINY_IMAGE_SIZE
from sb_testkit.images import disk_mask, textured_image
from sb_testkit.training_runs import train_in_process

from salient_background.models.errors import InputError
from salient_background.training import data as tdata
from salient_background.training.prepare import prepare_dataset

RES = TINY_IMAGE_SIZE  # 64: the tiny models' size
RESIZE = 80
WORDS = ["red bottle on a wooden table", "a swan in the garden", "red chair in a kitchen", "bottle on the beach"]


def make_photo(h: int, w: int, seed: int, radius: float | None = None, cy=None, cx=None):
    image = textured_image(h, w, seed) * 0.5
    radius = min(h, w) / 4 if radius is None else radius
    mask = disk_mask(h, w, h / 2 if cy is None else cy, w / 2 if cx is None else cx, radius)
    image = image * (1 - mask[..., None]) + mask[..., None] * torch.tensor([0.9, 0.2, 0.1])
    return image, mask


def save_photo(path: str, image: torch.Tensor) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)


class RedSegmenter:
    """Stands in for InSPyReNet: object = red pixels. Counts the photos it is asked about."""

    def __init__(self):
        self.calls = 0
        self.seen = 0

    def predict(self, images):
        self.calls += 1
        self.seen += images.shape[0]
        maps = ((images[..., 0] > 0.7) & (images[..., 1] < 0.4)).float()

        class P:
            pass

        p = P()
        p.maps = maps
        return p


def make_photo_folder(root: str, n: int = 6, h: int = 96, w: int = 80) -> list[float]:
    """n good photos in nested folders (sidecar captions on all but the last), returns their object-area fractions."""
    areas = []
    for i in range(n):
        image, mask = make_photo(h, w, seed=i, radius=14 + 2 * (i % 3), cy=h / 2 + (i % 3) * 4, cx=w / 2 - (i % 2) * 6)
        sub = os.path.join(root, f"set{i % 2}", "deep" if i % 3 == 0 else "")
        path = os.path.join(sub, f"photo{i}.png")
        save_photo(path, image)
        if i != n - 1:
            with open(os.path.join(sub, f"photo{i}.txt"), "w") as fh:
                fh.write(WORDS[i % len(WORDS)] + "\n\n" + ("a photo" if i % 2 else "") + "\n")
        areas.append(float(mask.mean()))
    return areas


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A prepared dataset of 8 photos (module-wide, used by the trainer tests)."""
    root = tmp_path_factory.mktemp("train_data")
    make_photo_folder(str(root / "photos"), n=8)
    prepare_dataset(str(root / "dataset"), image_dirs=[str(root / "photos")], segmenter=RedSegmenter(), progress=False)
    return str(root / "dataset")


# ------------------------------------------------------------------------------------------------ preparation
def test_prepare_filters_counts_and_resumes(tmp_path):
    photos = tmp_path / "photos"
    areas = make_photo_folder(str(photos), n=4)
    save_photo(str(photos / "bad" / "no_object.png"), textured_image(64, 64, 9) * 0.5)  # empty mask
    save_photo(str(photos / "bad" / "all_red.png"), torch.ones(64, 64, 3) * torch.tensor([0.9, 0.2, 0.1]))  # full
    (photos / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    seg = RedSegmenter()
    out = str(tmp_path / "ds")
    report = prepare_dataset(out, image_dirs=[str(photos)], segmenter=seg, progress=False, batch_size=8)
    assert report.kept == 4 and report.merged
    assert dict(report.rejected) == {"empty_mask": 1, "full_mask": 1, "unreadable": 1}
    assert report.without_caption == 1 and report.captioned_by["sidecar"] == 3
    assert seg.seen == 6 and seg.calls == 2  # same-size photos batched: 4 of 96x80, 2 of 64x64
    rows = tdata.read_manifest(out)
    assert [os.path.basename(r["image"]) for r in rows] == ["photo0.png", "photo2.png", "photo3.png", "photo1.png"]
    by_name = {os.path.basename(r["image"]): r for r in rows}
    for i, area in enumerate(areas):
        row = by_name[f"photo{i}.png"]
        assert row["mask_area"] == pytest.approx(area, abs=1e-6)
        assert (row["width"], row["height"]) == (80, 96)
        mask = np.asarray(Image.open(row["mask"])) / 255.0
        assert mask.shape == (96, 80) and abs(mask.mean() - area) < 1e-6
        assert os.path.isfile(row["image"])
    assert by_name["photo0.png"]["captions"] == [WORDS[0]]
    assert by_name["photo1.png"]["captions"] == [WORDS[1], "a photo"]
    assert by_name["photo3.png"]["captions"] == []
    with open(os.path.join(out, "manifest.jsonl")) as fh:  # stored relative: the folders can move together
        assert all(not os.path.isabs(json.loads(line)["image"]) for line in fh)
    rejected = [json.loads(line) for line in open(os.path.join(out, "rejected.jsonl"))]
    assert sorted(os.path.basename(r["image"]) for r in rejected) == ["all_red.png", "broken.jpg", "no_object.png"]

    # a second run does nothing; a new photo is the only work of a third
    seg2 = RedSegmenter()
    again = prepare_dataset(out, image_dirs=[str(photos)], segmenter=seg2, progress=False)
    assert (again.processed, again.kept_before, again.rejected_before, seg2.seen) == (0, 4, 3, 0)
    save_photo(str(photos / "new" / "late.png"), make_photo(96, 80, seed=42)[0])
    os.remove(by_name["photo2.png"]["mask"])  # a lost mask is redone too
    seg3 = RedSegmenter()
    third = prepare_dataset(out, image_dirs=[str(photos)], segmenter=seg3, progress=False)
    assert (third.processed, third.kept, seg3.seen) == (2, 2, 2)
    assert len(tdata.read_manifest(out)) == 5


def test_prepare_split_over_processes_coco_and_csv(tmp_path):
    photos = tmp_path / "coco_images"
    make_photo_folder(str(photos), n=5)
    files = sorted(os.path.relpath(os.path.join(d, f), photos) for d, _, fs in os.walk(photos) for f in fs if f.endswith(".png"))
    coco = {"images": [{"id": i, "file_name": f} for i, f in enumerate(files)],
            "annotations": [{"image_id": i, "caption": f"coco caption {i} a"} for i in range(len(files))]
            + [{"image_id": 0, "caption": "second  caption"}]}
    for f in files:  # COCO captions only: drop the sidecars
        txt = os.path.splitext(photos / f)[0] + ".txt"
        if os.path.exists(txt):
            os.remove(txt)
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(coco))
    out = str(tmp_path / "ds")
    first = prepare_dataset(out, coco_annotations=str(ann), coco_images=str(photos), segmenter=RedSegmenter(),
                            manifest_name="manifest.csv", rank=1, world_size=2, progress=False)
    assert not first.merged and first.processed == 2  # rank 1 of 2 takes every second photo
    assert not os.path.exists(os.path.join(out, "manifest.csv"))
    second = prepare_dataset(out, coco_annotations=str(ann), coco_images=str(photos), segmenter=RedSegmenter(),
                             manifest_name="manifest.csv", rank=0, world_size=2, progress=False)
    assert second.merged and second.processed == 3  # the last to finish merges
    rows = tdata.read_manifest(os.path.join(out, "manifest.csv"))
    assert len(rows) == 5
    caps = {os.path.relpath(r["image"], photos): r["captions"] for r in rows}
    assert caps[files[0]] == ["coco caption 0 a", "second caption"]
    assert caps[files[3]] == ["coco caption 3 a"]


# ------------------------------------------------------------------------------------------------ samples
def test_sample_recipe_polarities_and_determinism(dataset_dir):
    rows = tdata.read_manifest(dataset_dir)
    cfg = tdata.SampleConfig(resolution=RES, resize_to=RESIZE, seed=3)
    ds = tdata.SalientTrainingDataset(rows, cfg)
    s = ds[(0, 2, 5)]
    assert s["pixel_values"].shape == (3, RES, RES) and s["hint"].shape == (3, RES, RES)
    # the crop is shared: the object (red) in the cropped photo is exactly where the cropped mask says
    photo01 = (s["pixel_values"] + 1) / 2
    red = ((photo01[0] > 0.7) & (photo01[1] < 0.4)).float()
    obj = 1 - s["repaint_mask"][0]
    assert (red != obj).float().mean() < 0.02 and obj.sum() > 50
    # polarities (models/generation/inpaint_inputs.py): repaint 1 on the background, hint soft 1 - mask, masked background 0
    assert torch.equal(s["repaint_mask"][0], (s["hint"][0] >= 0.5).float())
    assert torch.all(s["masked_image"][:, s["repaint_mask"][0] > 0.5] == 0)
    keep = s["repaint_mask"][0] < 0.5
    assert torch.equal(s["masked_image"][:, keep], s["pixel_values"][:, keep])
    # a pure function of the key
    t = ds[(0, 2, 5)]
    assert all(torch.equal(s[k], t[k]) for k in ("pixel_values", "noise", "latent_eps", "hint")) and s["timestep"] == t["timestep"]
    u = ds[(1, 2, 6)]
    assert not torch.equal(s["noise"], u["noise"])
    crops = {tuple(ds[(e, 2, 0)]["pixel_values"][0, :2, :2].flatten().tolist()) for e in range(8)}
    assert len(crops) > 2  # random crops change with the epoch


def test_empty_caption_rate_and_short_side_resize(dataset_dir):
    rows = tdata.read_manifest(dataset_dir)
    ds = tdata.SalientTrainingDataset(rows, tdata.SampleConfig(resolution=RES, resize_to=RESIZE))
    empty = sum(ds.caption(0, np.random.default_rng(i)) == "" for i in range(4000)) / 4000
    assert abs(empty - 0.1) < 0.015
    im = Image.new("RGB", (80, 96))
    assert tdata.resize_short_side(im, 768, Image.BOX, Image.BICUBIC).size == (768, 921)  # int(768/80*96)


def test_mask_precision_augmentation():
    mask = disk_mask(64, 64, 32, 32, 12)
    rng = np.random.default_rng(0)
    area = float(mask.sum())
    for kind in tdata.MASK_AUG_KINDS:
        out, got = tdata.degrade_mask(mask, rng, kinds=[kind], max_pixels=4, max_blur=3.0)
        assert got == kind and out.shape == mask.shape
        binary = float((out >= 0.5).sum())
        if kind == "dilate":
            assert binary > area
        elif kind == "erode":
            assert binary < area
        elif kind == "bbox":
            assert binary == 25 * 25  # the disk's bounding box, rows/cols 20..44
        else:
            assert ((out > 0.01) & (out < 0.99)).sum() > 0 and abs(binary - area) < 0.2 * area
    # off by default: samples carry the exact mask
    assert tdata.SampleConfig().mask_aug_prob == 0.0


def test_sampler_shards_and_resumes():
    full = tdata.ShardedBatchSampler(10, 2, world_size=1, seed=1, max_micro_steps=10)
    r0 = tdata.ShardedBatchSampler(10, 1, world_size=2, rank=0, seed=1, max_micro_steps=10)
    r1 = tdata.ShardedBatchSampler(10, 1, world_size=2, rank=1, seed=1, max_micro_steps=10)
    for a, b, c in zip(full, r0, r1):
        assert a == b + c
    later = tdata.ShardedBatchSampler(10, 2, seed=1, start_micro_step=7, max_micro_steps=10)
    assert list(later) == list(full)[7:]
    epoch0 = sorted(i for batch in list(full)[:5] for (_, i, _) in batch)
    assert epoch0 == list(range(10))  # every row once per epoch


# ------------------------------------------------------------------------------------------------ trainer
def _config(tiny, data, out, **kw):
    from salient_background.training.train import TrainConfig

    base = dict(data=data, base_model=tiny.si2_dir, output_dir=str(out), resolution=RES, resize_to=RESIZE,
                conditioning_channels=CONTROLNET_CONDITIONING_CHANNELS, batch_size=2, learning_rate=1e-4,
                checkpointing_steps=0, report_to="none", log_every=1000, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _fixed_batch_loss(tiny, data, controlnet, n=4):
    """Loss of ``controlnet`` on a fixed set: rows 0..n-1, fixed crops and noise, 3 timesteps spread out."""
    from diffusers import DDPMScheduler

    from salient_background.models.generation.loading import load_components
    from salient_background.training.loss import training_loss

    vae, te, tok, unet, _ = load_components(tiny.si2_dir)
    sched = DDPMScheduler.from_config(json.load(open(os.path.join(tiny.si2_dir, "scheduler", "scheduler_config.json"))))
    ds = tdata.SalientTrainingDataset(tdata.read_manifest(data), tdata.SampleConfig(resolution=RES, resize_to=RESIZE,
                                                                                     empty_caption_prob=0.0), tok)
    batch = tdata.collate([ds[(0, i, 10_000 + i)] for i in range(n)])
    total = 0.0
    with torch.no_grad():
        for t in (100, 500, 900):
            batch["timestep"] = torch.full((n,), t)
            total += float(training_loss(batch, controlnet=controlnet.eval(), unet=unet, vae=vae, text_encoder=te,
                                         noise_scheduler=sched, weight_dtype=torch.float32, device="cpu"))
    return total / 3


def test_zero_initialised_controlnet_leaves_si2_unchanged(tiny_sd, dataset_dir):
    from diffusers import ControlNetModel

    from salient_background.models.generation.pipeline import SalientBackgroundPipeline

    from salient_background.models.generation.loading import load_components

    vae, te, tok, unet, sched = load_components(tiny_sd.si2_dir)
    cn = ControlNetModel.from_unet(unet, conditioning_channels=3,
                                   conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS).eval()
    pipe = SalientBackgroundPipeline(vae, te, tok, unet, sched, controlnet=cn)
    image, mask = make_photo(RES, RES, seed=5)
    outs = [pipe(image[None], mask[None], "a red bottle", num_inference_steps=3, controlnet_conditioning_scale=s,
                 generator=torch.Generator().manual_seed(0), output_type="pt", show_progress=False).images
            for s in (0.0, 1.0)]
    assert torch.equal(outs[0], outs[1])
    # and the controlnet really ran: its residuals exist and are exactly zero
    x = torch.randn(1, 9, 8, 8)
    down, mid = cn(x, 10, encoder_hidden_states=torch.randn(1, 77, 32), controlnet_cond=torch.rand(1, 3, RES, RES),
                   return_dict=False)
    assert len(down) > 0 and all(float(d.abs().max()) == 0 for d in down) and float(mid.abs().max()) == 0


def test_loss_falls_below_half_while_frozen_control_does_not(tiny_sd, dataset_dir, tmp_path):
    trained = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", learning_rate=1e-2, max_train_steps=45,
                             batch_size=2, lr_scheduler="constant_with_warmup", lr_warmup_steps=3))
    frozen = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "frozen", learning_rate=0.0, max_train_steps=2))
    start = _fixed_batch_loss(tiny_sd, dataset_dir, frozen.controlnet)
    end = _fixed_batch_loss(tiny_sd, dataset_dir, trained.controlnet)
    print(f"fixed-set loss: start {start:.4f}, after 45 steps {end:.4f}")
    assert end < 0.5 * start
    # the frozen control ran the same loop and did not move: its zero convolutions are still zero (= the SI2 loss)
    zero_convs = {k: v for k, v in frozen.controlnet.state_dict().items() if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))}
    assert zero_convs and all(float(v.abs().max()) == 0 for v in zero_convs.values())
    assert trained.export_dir and os.path.isfile(os.path.join(trained.export_dir, "salient_controlnet.json"))


def test_resume_is_bitwise_identical(tiny_sd, dataset_dir, tmp_path):
    kw = dict(max_train_steps=5, gradient_accumulation_steps=2, batch_size=2, checkpointing_steps=2,
              checkpoints_total_limit=2, lr_scheduler="cosine", lr_warmup_steps=2, ema_decay=0.9, learning_rate=5e-4)
    full = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "full", **kw))
    part = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "split", stop_after_steps=3, **kw))
    assert part.global_step == 3 and part.export_dir is None
    from salient_background.training.checkpoints import list_checkpoints

    assert [os.path.basename(c) for c in list_checkpoints(str(tmp_path / "split"))] == ["checkpoint-2", "checkpoint-3"]
    resumed = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "split", resume_from="latest", **kw))
    assert resumed.global_step == 5
    assert [s for s, _ in resumed.losses] == [4, 5]
    assert [l for _, l in full.losses[3:]] == [l for _, l in resumed.losses]
    a, b = full.controlnet.state_dict(), resumed.controlnet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in a)
    assert any(float((a[k] - full.ema.shadow[k]).abs().max()) > 0 for k in a)  # EMA is not the raw weights
    # keep last K
    assert [os.path.basename(c) for c in list_checkpoints(str(tmp_path / "split"))] == ["checkpoint-4", "checkpoint-5"]


def test_export_loads_through_the_loader_and_reproduces_residuals(tiny_sd, dataset_dir, tmp_path):
    from salient_background.models.networks.controlnet_checkpoint import build_diffusers_controlnet
    from salient_background.models.generation.loading import load_controlnet, load_components
    from salient_background.training.export import export_checkpoint

    result = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", max_train_steps=2, checkpointing_steps=2,
                            learning_rate=1e-2))
    trained = result.controlnet.eval()
    exported = export_checkpoint(str(tmp_path / "run"), str(tmp_path / "export"))
    half = export_checkpoint(str(tmp_path / "run" / "checkpoints" / "checkpoint-2"), str(tmp_path / "export16"), fp16=True)
    unet = load_components(tiny_sd.si2_dir)[3]
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 9, 8, 8, generator=gen), torch.rand(2, 3, RES, RES, generator=gen)
    ctx = torch.randn(2, 77, 32, generator=gen)
    with torch.no_grad():
        ref = trained(x, torch.tensor([10, 700]), encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        assert float(ref[1].abs().max()) > 1e-4  # trained: no longer the zero-initialised output
        for folder, tol in ((exported, 0.0), (result.export_dir, 0.0), (half, 2e-3)):
            for model in (build_diffusers_controlnet(folder, cross_attention_dim=32), load_controlnet(folder, unet=unet)):
                got = model.float()(x, torch.tensor([10, 700]), encoder_hidden_states=ctx, controlnet_cond=hint,
                                    return_dict=False)
                for r, g in zip(list(ref[0]) + [ref[1]], list(got[0]) + [got[1]]):
                    assert float((r - g).abs().max()) <= tol * max(1.0, float(r.abs().max()))
    meta = json.load(open(os.path.join(exported, "salient_controlnet.json")))
    assert meta["steps"] == 2 and meta["recipe"]["resolution"] == RES and meta["dtype"] == "fp32"
    assert json.load(open(os.path.join(half, "salient_controlnet.json")))["dtype"] == "fp16"


def test_validation_images_si2_and_controlnet_side_by_side(tiny_sd, dataset_dir, tmp_path):
    result = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", max_train_steps=2, validation_steps=2,
                            validation_rows=2, validation_inference_steps=2, learning_rate=1e-2))
    path = tmp_path / "run" / "validation" / "step-000002.png"
    grid = np.asarray(Image.open(path)).astype(np.float32) / 255
    assert grid.shape == (2 * RES, 4 * RES, 3)
    si2, ctrl = grid[:RES, 2 * RES:3 * RES], grid[:RES, 3 * RES:]
    assert np.abs(si2 - ctrl).max() > 1 / 255  # the trained ControlNet changes the picture
    record = json.loads(open(tmp_path / "run" / "validation" / "validation.jsonl").read().splitlines()[-1])
    assert record["step"] == 2 and record["columns"] == ["photo", "hint", "SI2", "ControlNet"]
    assert result.global_step == 2


# ------------------------------------------------------------------------------------------------ distributed
def test_two_processes_equal_one_process_on_the_combined_batch(tiny_sd, dataset_dir, tmp_path):
    """torchrun --nproc_per_node 2 (accelerate MULTI_CPU, gloo), batch 1 each == one process, batch 2."""
    from safetensors.torch import load_file

    common = ["--data", dataset_dir, "--base-model", tiny_sd.si2_dir, "--resolution", str(RES), "--resize-to",
              str(RESIZE), "--conditioning-channels", *map(str, CONTROLNET_CONDITIONING_CHANNELS), "--max-train-steps",
              "3", "--learning-rate", "1e-3", "--checkpointing-steps", "0", "--report-to", "none", "--record-samples"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + os.getpid() % 1000), "-m", "salient_background.training", "train", *common,
                          "--batch-size", "1", "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "one", batch_size=2, max_train_steps=3, learning_rate=1e-3,
                   record_samples=True))
    seen = {r: [json.loads(line) for line in open(tmp_path / "two" / f"samples-rank{r}.jsonl")] for r in (0, 1)}
    single = [json.loads(line) for line in open(tmp_path / "one" / "samples-rank0.jsonl")]
    assert len(seen[0]) == len(seen[1]) == len(single) == 3
    for a, b, c in zip(seen[0], seen[1], single):
        assert a["index"] != b["index"]  # the ranks saw different samples
        assert a["index"] + b["index"] == c["index"] and a["position"] + b["position"] == c["position"]
        assert abs((a["loss"] + b["loss"]) / 2 - c["loss"]) < 1e-5  # DDP's mean of rank means = the batch mean
    w2 = load_file(str(tmp_path / "two" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    w1 = load_file(str(tmp_path / "one" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    # the zero convolutions started at 0: their size now is how far training moved the weights
    moved = max(float(w1[k].abs().max()) for k in w1 if k.startswith(("controlnet_down_blocks", "controlnet_mid_block")))
    print(f"two-process vs one-process: max abs weight difference {diff:.3g}, weights moved by up to {moved:.3g}")
    assert moved > 1e-3 and diff < 0.01 * moved  # equal up to float summation order (Adam amplifies tiny gradients)


def test_text_embedding_cache_trains_the_same_model(tiny_sd, dataset_dir, tmp_path):
    kw = dict(max_train_steps=2, learning_rate=1e-3)
    plain = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "plain", text_embedding_cache=False, **kw))
    cached = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "cached", **kw))  # the default
    a, b = plain.controlnet.state_dict(), cached.controlnet.state_dict()
    assert [l for _, l in plain.losses] == pytest.approx([l for _, l in cached.losses], rel=1e-5)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_text_embedding_cache_is_skipped_when_the_captions_outweigh_the_encoder(tiny_sd):
    from salient_background.models.generation.loading import load_components
    from salient_background.training.caches import TextEmbeddingCache

    text_encoder = load_components(tiny_sd.si2_dir)[1]
    encoder_bytes = sum(p.numel() * 4 for p in text_encoder.parameters())
    per_caption = text_encoder.config.max_position_embeddings * text_encoder.config.hidden_size * 4
    fits = encoder_bytes // per_caption - 1  # distinct captions besides "" that still fit
    captions = [f"caption {i}" for i in range(fits)]
    assert TextEmbeddingCache.worthwhile(text_encoder, captions + captions, torch.float32)  # duplicates count once
    assert not TextEmbeddingCache.worthwhile(text_encoder, captions + ["one more"], torch.float32)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_optimizer_in_backward_trains_the_same_weights(tiny_sd, dataset_dir, tmp_path, checkpointing):
    """--optimizer-in-backward: the gradients are used as they come and freed; with the clip active (a tiny
    max_grad_norm) and with gradient checkpointing the weights end as the normal path's."""
    kw = dict(max_train_steps=3, learning_rate=1e-3, max_grad_norm=1e-3, gradient_checkpointing=checkpointing)
    normal = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "normal", **kw))
    fused = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "fused", optimizer_in_backward=True, **kw))
    a, b = normal.controlnet.state_dict(), fused.controlnet.state_dict()
    moved = max(float(a[k].abs().max()) for k in a if k.startswith("controlnet_down_blocks"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"optimizer in backward vs normal: max weight difference {diff:.3g} (zero convs moved {moved:.3g})")
    assert moved > 1e-3  # training did move the zero-initialised outputs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [l for _, l in normal.losses] == [l for _, l in fused.losses]
    assert all(p.grad is None for p in fused.controlnet.parameters())


def test_clip_of_the_optimizer_in_backward_is_clip_grad_norm(tiny_sd):
    """The two-pass step on a small model equals backward + clip_grad_norm_ + AdamW.step, clip active or not."""
    from salient_background.training.low_memory import TwoPassClippedStep

    for max_norm in (1e-4, 1e4):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        twin = copy.deepcopy(model)
        opt_a = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
        opt_b = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
        stepper = TwoPassClippedStep(twin.parameters(), opt_b, max_norm)
        for step in range(3):
            x = torch.randn(5, 8, generator=torch.Generator().manual_seed(step))
            loss = model(x).square().mean()
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt_a.step()
            opt_a.zero_grad(set_to_none=True)
            out = twin(x)
            stepper.step([out], torch.autograd.grad(out.square().mean(), [out]))
        assert (float(total) > max_norm) == (max_norm < 1)  # the clip did (not) act
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(p, q) and q.grad is None


def test_train_command_line_memory_switches():
    from salient_background.training.cli import build_parser, config_from_args
    from salient_background.training.train import TrainConfig

    base = ["train", "--data", "d", "--base-model", "b"]
    default = config_from_args(build_parser().parse_args(base))
    assert (default.gradient_checkpointing, default.text_embedding_cache, default.optimizer_in_backward) == \
        ("off", True, False)
    lean = config_from_args(build_parser().parse_args(
        base + ["--gradient-checkpointing", "--no-text-embedding-cache", "--optimizer-in-backward"]))
    assert (lean.gradient_checkpointing, lean.text_embedding_cache, lean.optimizer_in_backward) == ("all", False, True)
    some = config_from_args(build_parser().parse_args(base + ["--gradient-checkpointing", "controlnet"]))
    assert some.gradient_checkpointing == "controlnet"
    assert TrainConfig(gradient_checkpointing=True).gradient_checkpointing == "all"  # the former boolean
    with pytest.raises(InputError, match="gradient_checkpointing must be one of off, controlnet, all"):
        TrainConfig(gradient_checkpointing="sometimes")


def test_optimizer_in_backward_refuses_accumulation(tiny_sd, dataset_dir, tmp_path):
    with pytest.raises(InputError, match="optimizer-in-backward cannot be combined with gradient accumulation"):
        train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", max_train_steps=1, optimizer_in_backward=True,
                       gradient_accumulation_steps=2))


def test_latent_cache_holds_the_vae_posteriors_and_resumes(tiny_sd, dataset_dir, tmp_path):
    """--latent-cache: K fixed crops per row encoded once; training reads them instead of running the VAE."""
    from safetensors.torch import load_file

    from salient_background.models.generation.inpaint_inputs import build_inpaint_inputs
    from salient_background.models.generation.loading import load_components

    kw = dict(max_train_steps=3, latent_cache=True, latent_cache_crops=2, text_embedding_cache=True, learning_rate=1e-3,
              checkpointing_steps=3)
    first = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", stop_after_steps=1, **kw))
    cache = tmp_path / "run" / "latent_cache"
    files = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(files) == 8 and first.global_step == 1
    # the cached posterior of crop 1 of row 5 is the VAE's posterior of that crop
    vae = load_components(tiny_sd.si2_dir)[0]
    ds = tdata.SalientTrainingDataset(tdata.read_manifest(dataset_dir), tdata.SampleConfig(resolution=RES, resize_to=RESIZE))
    image, mask = ds.load_crop(5, ds.cache_crop_rng(5, 1))
    cached = load_file(str(cache / files[5]))
    with torch.no_grad():
        post = vae.encode((image[None] * 2 - 1)).latent_dist
        masked = vae.encode(build_inpaint_inputs(image[None], mask[None], layout="BCHW").masked_image).latent_dist
    assert cached["latent_mean"].shape == (2, 4, RES // 8, RES // 8)
    assert torch.allclose(cached["latent_mean"][1], post.mean[0], atol=1e-6)
    assert torch.allclose(cached["masked_std"][1], masked.std[0], atol=1e-6)
    # resume: the cache is reused (not rebuilt) and the run ends as an uninterrupted one
    stamp = os.path.getmtime(cache / files[0])
    resumed = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "run", resume_from="latest", **kw))
    assert os.path.getmtime(cache / files[0]) == stamp
    full = train_in_process(_config(tiny_sd, dataset_dir, tmp_path / "full", **kw))
    a, b = full.controlnet.state_dict(), resumed.controlnet.state_dict()
    assert resumed.global_step == 3 and all(torch.equal(a[k], b[k]) for k in a)


def test_captions_for_photos_without_any_come_from_the_captioner(tmp_path):
    """BLIP-2 (a tiny random one, loaded by our Blip2Captioner from a local folder) and the prepare plumbing."""
    from sb_testkit.blip2 import save_tiny_blip2

    from salient_background.training.prepare import Blip2Captioner

    blip = Blip2Captioner(save_tiny_blip2(str(tmp_path / "blip2")), device="cpu", max_new_tokens=4)
    texts = blip([Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (50, 20), (10, 10, 200))])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    photos = tmp_path / "photos"
    make_photo_folder(str(photos), n=3)  # photo2 has no sidecar caption
    asked = []

    def captioner(images):
        asked.append([im.size for im in images])
        return ["a generated caption"] * len(images)

    report = prepare_dataset(str(tmp_path / "ds"), image_dirs=[str(photos)], segmenter=RedSegmenter(),
                             captioner=captioner, progress=False)
    assert asked == [[(80, 96)]] and report.captioned_by == {"sidecar": 2, "blip2": 1} and report.without_caption == 0
    rows = {os.path.basename(r["image"]): r for r in tdata.read_manifest(str(tmp_path / "ds"))}
    assert rows["photo2.png"]["captions"] == ["a generated caption"]
