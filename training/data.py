"""Training data: the manifest ``prepare`` writes, the per-sample recipe, and an exactly resumable sharded sampler.

Per sample (the recipe of the reference training code, yahoo/photo-background-generation): the photo and its
salient mask (object = white, soft) are resized so the short side is ``resize_to`` (768), one random ``resolution`` x
``resolution`` crop (512) is shared by both, the caption is replaced by "" with probability ``empty_caption_prob``
(0.1; one caption drawn at random when a row has several). The model inputs are then built by
:func:`models.generation.inpaint_inputs.build_inpaint_inputs` -- the code the pipeline and the ComfyUI node use -- so training
and inference share one polarity convention: the repaint mask is the inverted object mask binarised at 0.5, the
hint the soft inverted mask in [0,1], the masked image the photo in [-1,1] with the background set to 0.

SDXL (``SampleConfig.time_ids``; its trainer default is ``resize_to == resolution == 1024``) also gets each crop's
time ids: the photo's original (height, width), the crop's (top, left) offset in the resized photo and the crop size,
which its UNet and ControlNet receive as added conditioning.

Optional mask-precision augmentation (off by default; in the spirit of SmartBrush, CVPR 2023): with probability
``mask_aug_prob`` the object mask given to the model is degraded at a random precision level -- a Gaussian blur, a
dilation or erosion by a few pixels, or the object's bounding box -- while the target stays the real photo, so the
ControlNet learns to tolerate the imperfect masks users have. See :func:`degrade_mask`.

Randomness is a pure function of (seed, epoch, dataset index) for the crop / caption / augmentation and of (seed,
sample position in the run) for the diffusion noise, the timestep and the VAE posterior draw. Nothing depends on a
global random state, the number of data workers or the number of processes: a resumed run sees exactly the samples
and noise it would have seen, and two processes with batch b see exactly what one process with batch 2b sees.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..models.errors import InputError
from ..models.generation.inpaint_inputs import build_inpaint_inputs
from ..models.generation.text_encoding import tokenize
from .sources import load_rgb

log = logging.getLogger("salient_background")

MANIFEST_FIELDS = ("image", "mask", "captions", "width", "height", "mask_area")
CAPTION_SEPARATOR = " ||| "  # CSV manifests: several captions in one cell
MASK_AUG_KINDS = ("blur", "dilate", "erode", "bbox")


# ---------------------------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ManifestEntry:
    """One row of a manifest as read: its line in the file, the row (``image``/``mask`` absolute, ``captions`` a list
    of strings) or None with the reason it cannot be read."""

    line: int
    row: Optional[dict]
    problem: str = ""


def manifest_path(path: str) -> str:
    """The manifest file ``path`` names (a dataset folder stands for its manifest.jsonl / manifest.csv)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("manifest.jsonl", "manifest.csv"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise InputError(f"{path!r} has no manifest.jsonl or manifest.csv; run `prepare` on your photos first")
    if not os.path.isfile(path):
        raise InputError(f"manifest not found: {path!r}; run `prepare` on your photos first")
    return path


def _raw_rows(path: str) -> Iterator[tuple[int, object]]:
    """(line number, the row as decoded: a dict, or the exception that stopped its decoding) of a manifest file."""
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for raw in reader:
                yield reader.line_num, raw
        return
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, exc


def _captions(raw: dict) -> list:
    """A row's captions as a list (CSV: one ``caption`` column, several joined by " ||| ", or a JSON list)."""
    captions = raw.get("captions", raw.get("caption", []))
    if isinstance(captions, str):
        text = captions.strip()
        if text.startswith("["):
            captions = json.loads(text)
        else:
            captions = [c.strip() for c in text.split(CAPTION_SEPARATOR.strip()) if c.strip()] if text else []
    captions = list(captions or [])
    if not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be text, got {captions!r}")
    return captions


def _entry(line: int, raw, root: str) -> ManifestEntry:
    if isinstance(raw, Exception):
        return ManifestEntry(line, None, f"not a JSON object ({raw})")
    if not isinstance(raw, dict):
        return ManifestEntry(line, None, f"not a JSON object (got {type(raw).__name__})")
    missing = [k for k in ("image", "mask") if not isinstance(raw.get(k), str) or not raw.get(k)]
    if missing:
        return ManifestEntry(line, None, f"no {' or '.join(repr(k) for k in missing)} path (got {sorted(raw)})")
    try:
        captions = _captions(raw)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        return ManifestEntry(line, None, f"unreadable caption column: {exc}")
    row = dict(raw)
    row["captions"] = captions
    row["image"] = os.path.normpath(os.path.join(root, raw["image"]))
    row["mask"] = os.path.normpath(os.path.join(root, raw["mask"]))
    return ManifestEntry(line, row)


def parse_manifest(path: str) -> tuple[str, list[ManifestEntry]]:
    """(the manifest file, every row of it as a :class:`ManifestEntry`): a row that cannot be read is kept, with
    the reason, so that a check can list all of them at once."""
    path = manifest_path(path)
    root = os.path.dirname(os.path.abspath(path))
    try:
        return path, [_entry(line, raw, root) for line, raw in _raw_rows(path)]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc}); a manifest is JSON lines or CSV") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from exc


def read_manifest(path: str) -> list[dict]:
    """Rows of a manifest (``.jsonl`` or ``.csv``) with ``image``/``mask`` made absolute (they are stored relative to
    the manifest's folder). ``captions`` is always a list (CSV: one ``caption`` column, several joined by " ||| ",
    or a ``captions`` column holding a JSON list). A row that cannot be read is an error naming its line."""
    path, entries = parse_manifest(path)
    for e in entries:
        if e.row is None:
            raise InputError(f"{path}: line {e.line}: {e.problem}")
    return [e.row for e in entries]


def json_line(record: dict) -> str:
    """One JSONL line: UTF-8 text as is (readable captions), except for a file name that is not valid UTF-8 (a
    Latin-1 camera card's: surrogate escapes), which is written as ``\\udcXX`` escapes that read back the same."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record)
    return text + "\n"


def write_manifest(path: str, rows: Sequence[dict]) -> None:
    """Write rows (paths already relative to the manifest's folder) as JSONL or CSV (by extension), atomically."""
    tmp = path + ".tmp"
    if path.lower().endswith(".csv"):
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:  # names as their bytes
            writer = csv.DictWriter(fh, fieldnames=["image", "mask", "caption", "width", "height", "mask_area"])
            writer.writeheader()
            for r in rows:
                writer.writerow({
                    "image": r["image"], "mask": r["mask"], "caption": CAPTION_SEPARATOR.join(r.get("captions", [])),
                    "width": r.get("width"), "height": r.get("height"), "mask_area": r.get("mask_area"),
                })
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json_line(r))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# per-sample geometry
# ---------------------------------------------------------------------------------------------------------------
def resize_short_side(image, short: int, resample_down, resample_up):
    """PIL resize so the short side is ``short`` (long side truncated like the reference's ``int(ratio * long)``)."""
    w, h = image.size
    if w <= h:
        size = (short, max(short, int(short / w * h)))
    else:
        size = (max(short, int(short / h * w)), short)
    if size == (w, h):
        return image
    return image.resize(size, resample_down if short < min(w, h) else resample_up)


def degrade_mask(mask: torch.Tensor, rng: np.random.Generator, *, max_blur: float = 8.0, max_pixels: int = 16,
                 kinds: Sequence[str] = MASK_AUG_KINDS) -> tuple[torch.Tensor, str]:
    """One random imprecise version of an object mask [H,W] in [0,1] (SmartBrush-style precision levels).

    ``blur``: Gaussian blur with sigma uniform in [1, max_blur] (soft edges; the binarised repaint region moves a
    little, the soft hint spreads); ``dilate`` / ``erode``: grow / shrink by 1..max_pixels pixels (a loose / tight
    user mask); ``bbox``: the object's bounding box (the coarsest level). Returns (mask, kind)."""
    from ..models.imaging import mask_ops

    kind = kinds[int(rng.integers(len(kinds)))]
    m = mask[None]
    if kind == "blur":
        m = mask_ops.gaussian_blur(m, float(rng.uniform(1.0, max_blur)))
    elif kind == "dilate":
        m = mask_ops.grow(m, int(rng.integers(1, max_pixels + 1)))
    elif kind == "erode":
        m = mask_ops.grow(m, -int(rng.integers(1, max_pixels + 1)))
    elif kind == "bbox":
        ys, xs = torch.nonzero(mask >= 0.5, as_tuple=True)
        if len(ys):
            box = torch.zeros_like(mask)
            box[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = 1.0
            m = box[None]
    else:
        raise ValueError(f"unknown mask augmentation {kind!r}; one of {MASK_AUG_KINDS}")
    return m[0], kind


@dataclass
class SampleConfig:
    resolution: int = 512
    resize_to: int = 768
    empty_caption_prob: float = 0.1
    mask_aug_prob: float = 0.0  # SmartBrush-style mask-precision augmentation, off by default
    mask_aug_max_blur: float = 8.0
    mask_aug_max_pixels: int = 16
    center_crop: bool = False  # validation / deterministic previews
    # latent cache (see training.caches.build_latent_cache): K fixed crops per row, their VAE posteriors on disk
    latent_cache_dir: Optional[str] = None
    latent_cache_crops: int = 4
    seed: int = 0
    # noise drawn per sample (latent geometry of the VAE)
    latent_channels: int = 4
    vae_scale_factor: int = 8
    num_train_timesteps: int = 1000
    # SDXL: each sample carries its time ids (original size, crop offset, target size) for the added conditioning
    time_ids: bool = False


def _seed_seq(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])


class SalientTrainingDataset(torch.utils.data.Dataset):
    """Rows of a manifest as training samples. Keys are ``(epoch, index, position)`` triples (see
    :class:`ShardedBatchSampler`): ``epoch`` and ``index`` fix the crop, caption and augmentation; ``position`` (the
    sample's place in the whole run) fixes the diffusion noise, the timestep and the VAE posterior draws."""

    def __init__(self, rows: Sequence[dict], config: SampleConfig, tokenizer=None):
        if not rows:
            raise InputError("the manifest has no rows: nothing to train on")
        if config.resize_to < config.resolution:
            raise InputError(f"resize_to ({config.resize_to}) must be at least the crop resolution ({config.resolution})")
        if config.resolution % config.vae_scale_factor:
            raise InputError(f"resolution {config.resolution} is not a multiple of {config.vae_scale_factor}")
        self.rows = list(rows)
        self.config = config
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def load_crop(self, index: int, rng: Optional[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image [3,R,R] in [0,1], object_mask [R,R] in [0,1]) of row ``index``: short side -> resize_to, one shared
        crop (random with ``rng``, centred without)."""
        image, mask, _ = self.load_crop_with_geometry(index, rng)
        return image, mask

    def load_crop_with_geometry(self, index: int, rng: Optional[np.random.Generator]):
        """:meth:`load_crop` plus the crop's geometry as SDXL's time ids: (original height, original width, crop top,
        crop left, R, R) -- the photo's size before the resize and the crop's offset in the resized photo."""
        from PIL import Image

        cfg = self.config
        image, mask = self.read_row(index)
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.BILINEAR)
        original_w, original_h = image.size
        # the reference uses OpenCV's INTER_AREA; PIL's box filter is its equivalent when shrinking
        image = resize_short_side(image, cfg.resize_to, Image.BOX, Image.BICUBIC)
        mask = resize_short_side(mask, cfg.resize_to, Image.BOX, Image.BILINEAR)
        w, h = image.size
        r = cfg.resolution
        if rng is None or cfg.center_crop:
            x, y = (w - r) // 2, (h - r) // 2
        else:  # offsets 0..max inclusive (the reference's randint(0, max) excludes max and fails when max == 0)
            x, y = int(rng.integers(0, w - r + 1)), int(rng.integers(0, h - r + 1))
        image = torch.from_numpy(np.asarray(image.crop((x, y, x + r, y + r)), dtype=np.float32) / 255.0)
        mask = torch.from_numpy(np.asarray(mask.crop((x, y, x + r, y + r)), dtype=np.float32) / 255.0)
        time_ids = torch.tensor([original_h, original_w, y, x, r, r], dtype=torch.float32)
        return image.permute(2, 0, 1).contiguous(), mask, time_ids

    def read_row(self, index: int):
        """(photo as RGB, upright as ``prepare`` saw it; mask as L) of row ``index``. A file that fails here passed
        the header check at the start (:mod:`training.dataset_check`), so it changed since or its data is damaged."""
        from PIL import Image

        row = self.rows[index]
        try:
            image = load_rgb(row["image"])
            with Image.open(row["mask"]) as im:
                mask = im.convert("L")
        except Exception as exc:  # noqa: BLE001 -- any decoder failure: name the row, not a traceback
            raise InputError(f"cannot read the training photo {row['image']!r} or its mask {row['mask']!r} "
                             f"({type(exc).__name__}: {exc}); the files were checked (headers) when "
                             "training started, so they changed since or their data is damaged. Restore or fix them "
                             "and rerun with --resume-from latest") from exc
        return image, mask

    def caption(self, index: int, rng: Optional[np.random.Generator]) -> str:
        captions = [c for c in self.rows[index].get("captions", []) if c]
        if rng is None:
            return captions[0] if captions else ""
        drop = rng.random() < self.config.empty_caption_prob
        pick = int(rng.integers(len(captions))) if captions else 0
        return "" if drop or not captions else captions[pick]

    def __getitem__(self, key) -> dict:
        if isinstance(key, (int, np.integer)):
            key = (0, int(key), int(key))
        epoch, index, position = key
        cfg = self.config
        rng = np.random.default_rng(_seed_seq(cfg.seed, 1, epoch, index))
        cached = None
        if cfg.latent_cache_dir:
            crop = int(rng.integers(cfg.latent_cache_crops))
            image, object_mask, time_ids = self.load_crop_with_geometry(index, self.cache_crop_rng(index, crop))
            cached = read_cached_latents(cfg.latent_cache_dir, index, crop)
        else:
            image, object_mask, time_ids = self.load_crop_with_geometry(index, None if cfg.center_crop else rng)
        caption = self.caption(index, rng)
        aug = ""
        if cfg.mask_aug_prob > 0 and rng.random() < cfg.mask_aug_prob:
            object_mask, aug = degrade_mask(object_mask, rng, max_blur=cfg.mask_aug_max_blur,
                                            max_pixels=cfg.mask_aug_max_pixels)
        inputs = build_inpaint_inputs(image[None], object_mask[None], layout="BCHW")
        # per-position noise: the diffusion noise, the timestep, and the two VAE posterior draws
        gen = torch.Generator().manual_seed(int(_seed_seq(cfg.seed, 2, position).generate_state(1, np.uint64)[0] >> 1))
        lh = lw = cfg.resolution // cfg.vae_scale_factor
        shape = (cfg.latent_channels, lh, lw)
        sample = {
            "pixel_values": image * 2.0 - 1.0,
            "masked_image": inputs.masked_image[0],
            "repaint_mask": inputs.repaint_mask[0],
            "hint": inputs.hint[0],
            "noise": torch.randn(shape, generator=gen),
            "latent_eps": torch.randn(shape, generator=gen),
            "masked_latent_eps": torch.randn(shape, generator=gen),
            "timestep": torch.randint(0, cfg.num_train_timesteps, (), generator=gen),
            "caption": caption,
            "index": index,
            "position": position,
            "mask_aug": aug,
        }
        if cfg.time_ids:
            sample["time_ids"] = time_ids
        if cached is not None:
            sample.update(cached)  # with SDXL, the time ids the cached crop was recorded with
            del sample["pixel_values"], sample["masked_image"]  # the VAE is not run on them
        if self.tokenizer is not None:  # one tokenizer, or SDXL's two: input_ids, input_ids_2
            tokenizers = self.tokenizer if isinstance(self.tokenizer, (list, tuple)) else [self.tokenizer]
            for n, tokenizer in enumerate(tokenizers):
                sample["input_ids" if n == 0 else f"input_ids_{n + 1}"] = tokenize(tokenizer, [caption]).input_ids[0]
        return sample

    def cache_crop_rng(self, index: int, crop: int) -> np.random.Generator:
        """The generator fixing the offsets of cached crop ``crop`` of row ``index`` (a function of the seed)."""
        return np.random.default_rng(_seed_seq(self.config.seed, 3, index, crop))


LATENT_KEYS = ("latent_mean", "latent_std", "masked_mean", "masked_std")


def cached_latents_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"{index:08d}.safetensors")


def read_cached_latents(folder: str, index: int, crop: int) -> dict:
    """The cached posteriors of one crop (and, for SDXL, its time ids)."""
    from safetensors import safe_open

    path = cached_latents_path(folder, index)
    with safe_open(path, "pt") as fh:
        keys = LATENT_KEYS + (("time_ids",) if "time_ids" in fh.keys() else ())
        return {k: fh.get_slice(k)[crop] for k in keys}


def collate(samples: Sequence[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


# ---------------------------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------------------------
class ShardedBatchSampler:
    """Endless, exactly resumable batches of ``(epoch, index, position)`` keys for one process.

    Every epoch is a permutation of the rows drawn from (seed, epoch). Micro-step ``m`` takes the global batch
    ``perm[j*G:(j+1)*G]`` (``G = batch_size * world_size``, ``j = m mod steps_per_epoch``, the incomplete last batch
    of an epoch dropped) and process ``rank`` its slice ``[rank*b:(rank+1)*b]``. ``position`` numbers the samples of
    the run (``m*G + rank*b + i``). Starting at ``start_micro_step`` is exactly where an interrupted run stopped."""

    def __init__(self, num_rows: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_micro_step: int = 0, max_micro_steps: Optional[int] = None):
        self.n, self.b, self.world, self.rank, self.seed = num_rows, batch_size, world_size, rank, seed
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_rows // self.global_batch
        if self.steps_per_epoch < 1:
            raise InputError(
                f"{num_rows} training rows cannot fill one batch of {batch_size} per process x {world_size} processes; "
                "add data or lower --batch-size"
            )
        self.start = start_micro_step
        self.stop = max_micro_steps
        self._perm_cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng(_seed_seq(self.seed, 0, epoch)).permutation(self.n)}
        return self._perm_cache[epoch]

    def batch_keys(self, micro_step: int) -> list[tuple[int, int, int]]:
        epoch, j = divmod(micro_step, self.steps_per_epoch)
        perm = self.permutation(epoch)
        first = j * self.global_batch + self.rank * self.b
        return [(epoch, int(perm[first + i]), micro_step * self.global_batch + self.rank * self.b + i) for i in range(self.b)]

    def __iter__(self) -> Iterator[list]:
        m = self.start
        while self.stop is None or m < self.stop:
            yield self.batch_keys(m)
            m += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("endless sampler")
        return max(0, self.stop - self.start)
