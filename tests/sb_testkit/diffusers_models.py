"""Tiny random Stable-Diffusion-2-inpainting models and salient ControlNets, saved in the REAL on-disk formats.

What a user has on disk, in miniature (every network a few hundred kB, built in a couple of seconds):

* an SI2 pipeline folder as ``stabilityai/stable-diffusion-2-inpainting`` lays it out: ``unet/`` (a 9-input-channel
  ``UNet2DConditionModel``, linear projection, SD2-style per-block heads), ``vae/`` (4 levels -> scale factor 8,
  scaling factor 0.18215), ``text_encoder/`` (``CLIPTextModel`` saved with ``text_model.*`` keys, as the released
  folders have them -- transformers 5 would drop the prefix), ``tokenizer/`` (``vocab.json`` + ``merges.txt`` of a toy
  byte-level BPE vocabulary, ``model_max_length`` 77, pad token ``!``), ``scheduler/`` (the PNDM config SD2 ships; the
  pipelines turn it into UniPC with ``from_config``, as the reference does) and ``model_index.json``;
* the salient ControlNet made the way the paper made it -- ``ControlNetModel.from_unet(unet, conditioning_channels=3,
  conditioning_embedding_out_channels=<4 entries>)`` -- with EVERY tensor then redrawn at random (the zero convs too: a
  fresh ``from_unet`` ControlNet outputs zeros and would make any parity test pass trivially), saved as
  - a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``),
  - a single ``.safetensors`` with diffusers keys,
  - ``.pth`` files like the released ``controlnet_inpainting_salient_aware.pth``: a plain state dict, one with a
    ``module.`` prefix, and ones nested under ``state_dict`` / ``model``;
* the Hugging Face layout of ``yahoo-inc/photo-background-generation``: the SI2 folder plus ``controlnet/``.

Use :func:`tiny_sd_models` (built once per test session, whatever fixture or module asks first) or the
``tiny_sd`` fixture (import it into a test module: ``from sb_testkit.diffusers_models import tiny_sd  # noqa``).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

import torch

from .files import process_temporary_folder

# Pixel size the tiny models are meant to run at: latents are 8x8, the UNet's inner level 4x4.
TINY_IMAGE_SIZE = 64
CROSS_ATTENTION_DIM = 32
VAE_SCALING_FACTOR = 0.18215
# SD2 inpainting's tokenizer pads with "!" (id 0 in the real vocabulary) -- kept here.
TOY_WORDS = (
    "a photo of the on in at with and dark white red blue green swan bottle table chair kitchen bedroom beach "
    "studio background product wooden marble garden forest city street night sunny light shadow"
).split()


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------
def tiny_unet_config() -> dict:
    """A 9-input-channel SD2-inpainting-like UNet: two levels, linear projection, per-block head counts."""
    return dict(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=9,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),  # SD2's config also names head *counts* attention_head_dim ([5, 10, 20, 20])
        use_linear_projection=True,
        upcast_attention=False,
    )


def tiny_vae_config() -> dict:
    """Four levels like SD's VAE, so the pixel/latent factor is 8."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=VAE_SCALING_FACTOR,
    )


def sd2_scheduler_config() -> dict:
    """The scheduler config shipped in ``stable-diffusion-2-inpainting/scheduler`` (PNDM, scaled-linear betas)."""
    return {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.8.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }


CONTROLNET_CONDITIONING_CHANNELS = (8, 8, 16, 16)  # 4 entries: three stride-2 steps reach latent size


# ---------------------------------------------------------------------------------------------------------------
# builders (in memory)
# ---------------------------------------------------------------------------------------------------------------
def build_tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config()).eval()


def build_tiny_vae(seed: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**tiny_vae_config()).eval()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def toy_bpe_vocabulary(words=TOY_WORDS) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary in CLIP's format: every byte (alone and word-final ``</w>``), merges that spell
    each of ``words`` as one token, then the two special tokens. Returns (vocab, merges)."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = list(byte_chars) + [c + "</w>" for c in byte_chars]
    merges: list[str] = []
    known = set(tokens)
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: "a b" -> "ab", "ab c" -> "abc" ...
            merged = parts[0] + parts[1]
            pair = f"{parts[0]} {parts[1]}"
            if pair not in merges:
                merges.append(pair)
            if merged not in known:
                known.add(merged)
                tokens.append(merged)
            parts = [merged] + parts[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_toy_tokenizer(folder: str) -> str:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` like the released
    SD2 ``tokenizer/`` folder (slow-tokenizer files only; no ``tokenizer.json``). Load it with
    ``CLIPTokenizer.from_pretrained(folder)`` -- transformers 5 ignores ``vocab_file=`` keyword arguments."""
    os.makedirs(folder, exist_ok=True)
    vocab, merges = toy_bpe_vocabulary()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as fh:
        json.dump(special, fh, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
             "add_prefix_space": False, "errors": "replace", **special},
            fh,
            indent=2,
        )
    return folder


def tiny_text_encoder_config():
    from transformers import CLIPTextConfig

    vocab, _ = toy_bpe_vocabulary()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=CROSS_ATTENTION_DIM,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["!"],
        architectures=["CLIPTextModel"],
    )


def build_tiny_text_encoder(seed: int = 2):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_encoder_config()).eval()


def randomize_all_tensors(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Redraw EVERY floating tensor of ``module`` (parameters and buffers), zero convs included.

    Biases: N(0, std). Normalisation scales: 1 + N(0, std). Weight matrices/kernels: N(0, s) with
    s = max(std, 1/sqrt(fan_in)) -- at the tiny widths used here a flat 0.02 would shrink the hint's signal through
    the conditioning embedding to ~1e-6 (nothing a polarity test could see); 1/sqrt(fan_in) keeps every path alive.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            is_norm_scale = name.endswith("weight") and tensor.ndim == 1 and "norm" in name
            if is_norm_scale:
                value = 1.0 + noise * std
            elif tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                value = noise * max(std, fan_in ** -0.5)
            else:
                value = noise * std
            tensor.copy_(value)
    return module


def build_random_controlnet(unet, seed: int = 3, std: float = 0.02):
    """The salient ControlNet's architecture as the paper made it (``from_unet`` of the 9-channel SI2 UNet, 3-channel
    hint, 4-entry conditioning embedding), then every tensor redrawn at random."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=3, conditioning_embedding_out_channels=CONTROLNET_CONDITIONING_CHANNELS
    )
    return randomize_all_tensors(controlnet, seed, std).eval()


# ---------------------------------------------------------------------------------------------------------------
# savers (real formats)
# ---------------------------------------------------------------------------------------------------------------
def save_text_encoder_real_layout(text_encoder, folder: str) -> str:
    """``config.json`` + ``model.safetensors`` with ``text_model.*`` keys, as in the released SD2 folders."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    text_encoder.config.to_json_file(os.path.join(folder, "config.json"))
    state = {}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state[key] = value.detach().contiguous().clone()
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder


def save_controlnet_diffusers(controlnet, folder: str, *, safe_serialization: bool = True) -> str:
    """A bare diffusers ControlNet folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``)."""
    controlnet.save_pretrained(folder, safe_serialization=safe_serialization)
    return folder


def controlnet_state_dict(controlnet) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in controlnet.state_dict().items()}


def save_controlnet_single_file(controlnet, path: str) -> str:
    """One ``.safetensors`` with diffusers key names (what our trainer's weights file is when used on its own)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(controlnet_state_dict(controlnet), path, metadata={"format": "pt"})
    return path


PTH_LAYOUTS = ("plain", "module", "state_dict", "model", "state_dict_module")


def save_controlnet_pth(controlnet, path: str, layout: str = "plain") -> str:
    """A torch pickle like the released ``controlnet_inpainting_salient_aware.pth`` (inner layout undocumented):

    ``plain`` = the state dict itself; ``module`` = keys prefixed ``module.`` (DataParallel/DDP);
    ``state_dict`` / ``model`` = ``{"<that>": state_dict, "epoch": 3}``; ``state_dict_module`` = nested AND prefixed.
    """
    state = controlnet_state_dict(controlnet)
    if layout in ("module", "state_dict_module"):
        state = {"module." + k: v for k, v in state.items()}
    if layout in ("state_dict", "state_dict_module"):
        payload = {"state_dict": state, "epoch": 3, "global_step": 1500}
    elif layout == "model":
        payload = {"model": state, "epoch": 3}
    elif layout in ("plain", "module"):
        payload = state
    else:
        raise ValueError(f"unknown .pth layout {layout!r}; one of {PTH_LAYOUTS}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(payload, path)
    return path


def write_model_index(folder: str, *, with_controlnet: bool) -> None:
    index = {
        "_class_name": "StableDiffusionControlNetInpaintPipeline" if with_controlnet else "StableDiffusionInpaintPipeline",
        "_diffusers_version": "0.21.4",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if with_controlnet:
        index["controlnet"] = ["diffusers", "ControlNetModel"]
    with open(os.path.join(folder, "model_index.json"), "w") as fh:
        json.dump(dict(sorted(index.items())), fh, indent=2)


def save_si2_folder(folder: str, unet, vae, text_encoder) -> str:
    """An SD2-inpainting pipeline folder in the released layout (see module docstring)."""
    os.makedirs(folder, exist_ok=True)
    unet.save_pretrained(os.path.join(folder, "unet"))
    vae.save_pretrained(os.path.join(folder, "vae"))
    save_text_encoder_real_layout(text_encoder, os.path.join(folder, "text_encoder"))
    write_toy_tokenizer(os.path.join(folder, "tokenizer"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump(sd2_scheduler_config(), fh, indent=2)
    write_model_index(folder, with_controlnet=False)
    return folder


def save_hf_pipeline_folder(folder: str, unet, vae, text_encoder, controlnet) -> str:
    """The ``yahoo-inc/photo-background-generation`` layout: the SI2 components plus ``controlnet/``."""
    save_si2_folder(folder, unet, vae, text_encoder)
    save_controlnet_diffusers(controlnet, os.path.join(folder, "controlnet"))
    write_model_index(folder, with_controlnet=True)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the session-wide set
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TinySDModels:
    """Paths of one consistent set of tiny models (same UNet/VAE/text encoder/ControlNet weights everywhere)."""

    root: str
    si2_dir: str  # SD2-inpainting pipeline folder (no controlnet)
    hf_pipeline_dir: str  # yahoo-inc/photo-background-generation layout (SI2 + controlnet/)
    controlnet_dir: str  # bare diffusers ControlNet folder, safetensors weights
    controlnet_bin_dir: str  # bare diffusers ControlNet folder, diffusion_pytorch_model.bin
    controlnet_safetensors: str  # single file, diffusers keys
    controlnet_pth: dict = field(default_factory=dict)  # layout name -> .pth path (see PTH_LAYOUTS)
    image_size: int = TINY_IMAGE_SIZE

    def controlnet_state_dict(self) -> dict[str, torch.Tensor]:
        """The ground-truth ControlNet weights (diffusers keys), read back from the single safetensors file."""
        from safetensors.torch import load_file

        return load_file(self.controlnet_safetensors)

    def load_components(self):
        """Fresh in-memory copies of (unet, vae, text_encoder, tokenizer, controlnet) read from the saved files."""
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return (
            UNet2DConditionModel.from_pretrained(os.path.join(self.si2_dir, "unet")).eval(),
            AutoencoderKL.from_pretrained(os.path.join(self.si2_dir, "vae")).eval(),
            CLIPTextModel.from_pretrained(os.path.join(self.si2_dir, "text_encoder")).eval(),
            CLIPTokenizer.from_pretrained(os.path.join(self.si2_dir, "tokenizer")),
            ControlNetModel.from_pretrained(self.controlnet_dir).eval(),
        )


def build_tiny_sd_models(root: str, seed: int = 0) -> TinySDModels:
    """Build and save the whole set under ``root`` (about a second)."""
    unet = build_tiny_unet(seed)
    vae = build_tiny_vae(seed + 1)
    text_encoder = build_tiny_text_encoder(seed + 2)
    controlnet = build_random_controlnet(unet, seed + 3)
    si2_dir = save_si2_folder(os.path.join(root, "sd2-inpainting"), unet, vae, text_encoder)
    hf_dir = save_hf_pipeline_folder(os.path.join(root, "photo-background-generation"), unet, vae, text_encoder, controlnet)
    cn_dir = save_controlnet_diffusers(controlnet, os.path.join(root, "controlnet-diffusers"))
    cn_bin_dir = save_controlnet_diffusers(controlnet, os.path.join(root, "controlnet-diffusers-bin"), safe_serialization=False)
    single = save_controlnet_single_file(controlnet, os.path.join(root, "controlnet_salient.safetensors"))
    pths = {
        layout: save_controlnet_pth(controlnet, os.path.join(root, "pth", f"controlnet_inpainting_salient_aware_{layout}.pth"), layout)
        for layout in PTH_LAYOUTS
    }
    return TinySDModels(root, si2_dir, hf_dir, cn_dir, cn_bin_dir, single, pths)


_LOCK = threading.Lock()
_CACHE: dict[str, TinySDModels] = {}


def tiny_sd_models(base_dir: str | None = None) -> TinySDModels:
    """The session-wide set, built on first use (in ``base_dir`` or a temporary folder) and reused afterwards."""
    with _LOCK:
        if "default" not in _CACHE:
            root = os.path.join(base_dir, "tiny_sd") if base_dir else process_temporary_folder("sb_tiny_sd_")
            os.makedirs(root, exist_ok=True)
            _CACHE["default"] = build_tiny_sd_models(root)
        return _CACHE["default"]
