"""The one table of every weight file the pack uses: where it goes, where it comes from, how to check it.

Each :class:`ModelFile` row names the file (``filename``, relative to its ComfyUI model folder, so the ControlNet's
two files sit together in a sub-folder the loader lists as one model), the ComfyUI folder it belongs in, the URLs
that serve *identical bytes* (tried in order), the pinned revision, the exact size and checksums, the licence and
notes. ``python -m salient_background download`` fetches from it, the nodes' missing-file errors quote it, and the
README's models table is generated from it (``download --markdown``; a test keeps the two identical).

Rule for the values: a size or checksum is recorded only when a public source states it; the comment above each
row says which. Anything not stated publicly is ``None`` and the downloader reports the file as *unverified*
(it still checks whatever is known, e.g. the size). Never fill one in from a download of our own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

# ComfyUI model folder name -> default sub-folder of ComfyUI/models (what nodes/ registers with folder_paths)
FOLDER_DEFAULT_SUBDIRS = {
    "checkpoints": "checkpoints",
    "controlnet": "controlnet",
    "salient": "salient",
    "sams": "sams",
    "diffusers": "diffusers",  # ComfyUI core folder; holds the SD2-inpainting diffusers folder the command line uses
    "metrics": "metrics",  # the image-quality metrics' models (evaluate's table); the command line reads it
}

# Model folders a node registers that hold only the user's own files (nothing published to download), with the
# reason. tests/test_download.py requires every folder the nodes register to be covered by a row or listed here.
NO_PUBLISHED_FILES: dict[str, str] = {}


@dataclass(frozen=True)
class ModelFile:
    key: str  # stable identifier (registry_key in the nodes, a name on the download command line)
    filename: str  # path relative to the model folder, '/'-separated
    folder: str  # ComfyUI model folder name (a key of FOLDER_DEFAULT_SUBDIRS)
    title: str  # what it is, for people
    urls: tuple[str, ...]  # every URL serves the same bytes; tried in order
    revision: str | None  # the release tag or commit the URLs are pinned to
    size: int | None  # exact bytes, or None when no public source states it
    sha256: str | None
    md5: str | None
    licence: str
    approx_size: str  # human size for listings when the exact size is unknown ("1.46 GB")
    group: str  # what to ask the downloader for (several files may share a group)
    notes: str = ""
    evidence: tuple[str, ...] = field(default=(), compare=False)  # where size/checksums were read

    @property
    def verified(self) -> bool:
        """True when a published checksum exists for this file."""
        return bool(self.sha256 or self.md5)

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    def expected_bytes(self) -> int | None:
        """The exact size, else the rounded published one (for totals), else None."""
        if self.size is not None:
            return self.size
        try:
            number, unit = self.approx_size.split()
            return int(float(number) * {"GB": 1e9, "MB": 1e6, "kB": 1e3, "B": 1}[unit])
        except (ValueError, KeyError):
            return None

    def display_size(self) -> str:
        if self.size is not None:
            return human_size(self.size)
        return f"~{self.approx_size}" if self.approx_size else "unknown"


WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pth")


def human_size(n: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"


_HF_SD2 = "https://huggingface.co/stabilityai/stable-diffusion-2-inpainting/resolve"
_SD2_REV = "f9a3bba2bbc8c77ed181b37a386710f7e82132fa"
_HF_SD2_MIRROR = "https://huggingface.co/webui/stable-diffusion-2-inpainting/resolve"
_SD2_MIRROR_REV = "c932838323bd5e806c6036b3ec57c785e34a3369"

_HF_PBG = "https://huggingface.co/yahoo-inc/photo-background-generation/resolve"
# A commit of the Hugging Face repo; its controlnet/ files are those of commit 031798c ("Upload 16 files"), the
# last change to that folder (tree pages of 719f1ac and ec74248 both list controlnet/ as last changed there).
_PBG_REV = "719f1ac136b76609d8bd371606d0eaeda731b0dd"
_PBG_SUBDIR = "photo-background-generation"

_TB_RELEASE = "https://github.com/plemeri/transparent-background/releases/download"

# The other inpainting bases a salient ControlNet can be trained on (models/bases.py). No revision hash,
# size or checksum of these repos could be read from a public page when the rows were written, so the URLs follow
# the repos' main branch, no size is recorded ("unknown" in listings), and every file is unverified.
_HF_SD15 = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/resolve/main"
_SD15_SUBDIR = "stable-diffusion-v1-5-inpainting"
_SD15_LICENCE = "CreativeML OpenRAIL-M"
_HF_SDXL = "https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1/resolve/main"
_SDXL_SUBDIR = "stable-diffusion-xl-1.0-inpainting-0.1"
_SDXL_LICENCE = "CreativeML Open RAIL++-M"
_TOKENIZER_FILES = ("merges.txt", "vocab.json", "special_tokens_map.json", "tokenizer_config.json")


def _diffusers_folder_rows(prefix: str, subdir: str, url: str, files: dict, *, title: str, licence: str,
                           group: str, notes: str, folder: str = "diffusers", kind: str = "diffusers folder") -> tuple:
    """One unverified row per file of a diffusers model folder (``files``: path in the folder -> rounded size);
    ``folder`` / ``kind`` for another model folder (a transformers ``save_pretrained`` folder)."""
    return tuple(
        ModelFile(key=f"{prefix}_{path.replace('/', '_').replace('.', '_')}", filename=f"{subdir}/{path}",
                  folder=folder, title=f"{title}, {kind}: {path}", urls=(f"{url}/{path}",),
                  revision=None, size=None, sha256=None, md5=None, licence=licence, approx_size=approx, group=group,
                  notes=notes)
        for path, approx in files.items()
    )


def _text_files(*tokenizers: str) -> dict:
    return {f"{tok}/{name}": "" for tok in tokenizers for name in _TOKENIZER_FILES}


_SD15_ROWS = (
    # the single file ComfyUI's Load Checkpoint reads (a pickle); `generate` reads the diffusers folder below
    ModelFile(
        key="sd15_inpainting",
        filename="sd-v1-5-inpainting.ckpt",
        folder="checkpoints",
        title="Stable Diffusion 1.5 inpainting, single file (for ComfyUI)",
        urls=(f"{_HF_SD15}/sd-v1-5-inpainting.ckpt",),
        revision=None,
        size=None,
        sha256=None,
        md5=None,
        licence=_SD15_LICENCE,
        approx_size="",
        group="sd15_inpainting",
        notes="stable-diffusion-v1-5/stable-diffusion-inpainting; the base of a salient ControlNet trained for SD1.5 "
              "(none is published); the licence's use restrictions apply",
    ),
) + _diffusers_folder_rows(
    "sd15", _SD15_SUBDIR, _HF_SD15,
    {"model_index.json": "", "unet/config.json": "", "unet/diffusion_pytorch_model.safetensors": "",
     "vae/config.json": "", "vae/diffusion_pytorch_model.safetensors": "", "text_encoder/config.json": "",
     "text_encoder/model.safetensors": "", **_text_files("tokenizer"), "scheduler/scheduler_config.json": ""},
    title="SD1.5 inpainting", licence=_SD15_LICENCE, group="sd15_diffusers",
    notes="stable-diffusion-v1-5/stable-diffusion-inpainting (diffusers layout); for the command line",
)

# SDXL inpainting 0.1: the diffusers folder, which the command line reads (no single-file row is recorded).
_SDXL_ROWS = _diffusers_folder_rows(
    "sdxl", _SDXL_SUBDIR, _HF_SDXL,
    {"model_index.json": "", "unet/config.json": "", "unet/diffusion_pytorch_model.safetensors": "",
     "vae/config.json": "", "vae/diffusion_pytorch_model.safetensors": "", "text_encoder/config.json": "",
     "text_encoder/model.safetensors": "", "text_encoder_2/config.json": "",
     "text_encoder_2/model.safetensors": "", **_text_files("tokenizer", "tokenizer_2"),
     "scheduler/scheduler_config.json": ""},
    title="SDXL inpainting 0.1", licence=_SDXL_LICENCE, group="sdxl_diffusers",
    notes="diffusers/stable-diffusion-xl-1.0-inpainting-0.1 (diffusers layout); for the command line",
)

_SAM = "https://dl.fbaipublicfiles.com/segment_anything"

# The image-quality metrics' models (models/scoring/metrics/, docs/metrics.md), in models/metrics. No public page
# read when these rows were written states a full checksum or exact size of any of them, so every one is unverified;
# the two .pth names carry the first 8 hex digits of the file's sha256 (torch.hub's naming), which torch.hub checks
# but the downloader does not. The Hugging Face folders follow the repos' main branch (no revision could be read).
_METRIC_ROWS = (
    # pytorch-fid's GitHub release "fid_weights": Inception-v3 converted from TensorFlow's inception-2015-12-05, the
    # network of the original FID code; torch-fidelity and torchmetrics read this layout.
    ModelFile(
        key="metrics_inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        folder="metrics",
        title="Inception-v3, FID weights (FID and KID)",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              "pt_inception-2015-12-05-6726825d.pth",),
        revision="fid_weights",
        size=None,
        sha256=None,
        md5=None,
        licence="Apache-2.0",
        approx_size="",
        group="metrics_inception",
        notes="mseitzer/pytorch-fid release asset; converted from TensorFlow's Inception (Apache-2.0)",
    ),
    # torchvision's AlexNet_Weights.IMAGENET1K_V1 (torchvision/models/alexnet.py gives the URL and "_file_size":
    # 233.087 MB); lpips' own linear heads ship inside the lpips package.
    ModelFile(
        key="metrics_lpips_alexnet",
        filename="alexnet-owt-7be5be79.pth",
        folder="metrics",
        title="AlexNet (torchvision, ImageNet), the LPIPS backbone",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        revision=None,
        size=None,
        sha256=None,
        md5=None,
        licence="BSD-3-Clause (torchvision); trained on ImageNet, whose terms may apply",
        approx_size="233 MB",
        group="metrics_lpips_alexnet",
        notes="torchvision AlexNet_Weights.IMAGENET1K_V1",
    ),
) + _diffusers_folder_rows(
    "metrics_clip", "clip-vit-large-patch14", "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main",
    {"config.json": "", "model.safetensors": "", "preprocessor_config.json": "", "tokenizer.json": "",
     "tokenizer_config.json": "", "vocab.json": "", "merges.txt": "", "special_tokens_map.json": ""},
    title="CLIP ViT-L/14 (CLIP score)", licence="MIT (OpenAI CLIP); see the model card's intended uses",
    group="metrics_clip", notes="openai/clip-vit-large-patch14, torchmetrics' default CLIP-score model",
    folder="metrics", kind="transformers folder",
) + _diffusers_folder_rows(
    "metrics_dinov2", "dinov2-base", "https://huggingface.co/facebook/dinov2-base/resolve/main",
    {"config.json": "", "model.safetensors": "", "preprocessor_config.json": ""},
    title="DINOv2 ViT-B/14 (object similarity)", licence="Apache-2.0", group="metrics_dinov2",
    notes="facebook/dinov2-base", folder="metrics", kind="transformers folder",
)

MODEL_FILES: tuple[ModelFile, ...] = (
    # sha256: Hugging Face file page stabilityai/stable-diffusion-2-inpainting/blob/f9a3bba2.../512-inpainting-ema
    # .safetensors (Git LFS details, "5.21 GB"); the same sha256 is shown for webui/stable-diffusion-2-inpainting at
    # c932838, hence the mirror. Exact byte size: not stated on those pages -> None. Licence: model card.
    ModelFile(
        key="sd2_inpainting",
        filename="512-inpainting-ema.safetensors",
        folder="checkpoints",
        title="Stable Diffusion 2 inpainting (SI2), the base model",
        urls=(
            f"{_HF_SD2}/{_SD2_REV}/512-inpainting-ema.safetensors",
            f"{_HF_SD2_MIRROR}/{_SD2_MIRROR_REV}/512-inpainting-ema.safetensors",
        ),
        revision=_SD2_REV,
        size=None,
        sha256="b29e2ed9a8fe58e76f7e801bda091d23738bd74c1da3f339bcbe2d40922fcb60",
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="5.21 GB",
        group="sd2_inpainting",
        notes="stabilityai/stable-diffusion-2-inpainting; the licence's use restrictions apply",
        evidence=(
            "https://huggingface.co/stabilityai/stable-diffusion-2-inpainting/blob/"
            "f9a3bba2bbc8c77ed181b37a386710f7e82132fa/512-inpainting-ema.safetensors",
            "https://huggingface.co/webui/stable-diffusion-2-inpainting/blob/main/512-inpainting-ema.safetensors",
        ),
    ),
    # The same model as a diffusers folder, for the command line (`generate --si2 DIR`), from the same pinned commit.
    # unet sha256: file page stabilityai/stable-diffusion-2-inpainting/blob/main/unet/diffusion_pytorch_model.safetensors
    # (Git LFS details; last changed in ce94f6f, before f9a3bba2). Sizes in bytes: the tree pages of unet/, vae/,
    # text_encoder/ and tokenizer/ at f9a3bba2 / e4033a4 / d497d7c ("914 Bytes", "616 Bytes", "638 Bytes", "460 Bytes",
    # "829 Bytes"). The VAE and text-encoder weights' sha256 and the larger files' exact sizes were not found on a
    # public page -> None (reported unverified).
    ModelFile(
        key="si2_unet_config",
        filename="stable-diffusion-2-inpainting/unet/config.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: unet/config.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/unet/config.json",),
        revision=_SD2_REV,
        size=914,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="914 B",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_unet",
        filename="stable-diffusion-2-inpainting/unet/diffusion_pytorch_model.safetensors",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: unet/diffusion_pytorch_model.safetensors",
        urls=(f"{_HF_SD2}/{_SD2_REV}/unet/diffusion_pytorch_model.safetensors",),
        revision=_SD2_REV,
        size=None,
        sha256="9bcbb17f54b039f58bf78677fab8cd8a35dd686f6c9dd553e3646a8b0aaff41a",
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="3.46 GB",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_vae_config",
        filename="stable-diffusion-2-inpainting/vae/config.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: vae/config.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/vae/config.json",),
        revision=_SD2_REV,
        size=616,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="616 B",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_vae",
        filename="stable-diffusion-2-inpainting/vae/diffusion_pytorch_model.safetensors",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: vae/diffusion_pytorch_model.safetensors",
        urls=(f"{_HF_SD2}/{_SD2_REV}/vae/diffusion_pytorch_model.safetensors",),
        revision=_SD2_REV,
        size=None,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="335 MB",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_text_encoder_config",
        filename="stable-diffusion-2-inpainting/text_encoder/config.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: text_encoder/config.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/text_encoder/config.json",),
        revision=_SD2_REV,
        size=638,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="638 B",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_text_encoder",
        filename="stable-diffusion-2-inpainting/text_encoder/model.safetensors",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: text_encoder/model.safetensors",
        urls=(f"{_HF_SD2}/{_SD2_REV}/text_encoder/model.safetensors",),
        revision=_SD2_REV,
        size=None,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="1.36 GB",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_tokenizer_merges",
        filename="stable-diffusion-2-inpainting/tokenizer/merges.txt",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: tokenizer/merges.txt",
        urls=(f"{_HF_SD2}/{_SD2_REV}/tokenizer/merges.txt",),
        revision=_SD2_REV,
        size=None,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="525 kB",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_tokenizer_vocab",
        filename="stable-diffusion-2-inpainting/tokenizer/vocab.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: tokenizer/vocab.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/tokenizer/vocab.json",),
        revision=_SD2_REV,
        size=None,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="1.06 MB",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_tokenizer_special_tokens",
        filename="stable-diffusion-2-inpainting/tokenizer/special_tokens_map.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: tokenizer/special_tokens_map.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/tokenizer/special_tokens_map.json",),
        revision=_SD2_REV,
        size=460,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="460 B",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_tokenizer_config",
        filename="stable-diffusion-2-inpainting/tokenizer/tokenizer_config.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: tokenizer/tokenizer_config.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/tokenizer/tokenizer_config.json",),
        revision=_SD2_REV,
        size=829,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="829 B",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    ModelFile(
        key="si2_scheduler_config",
        filename="stable-diffusion-2-inpainting/scheduler/scheduler_config.json",
        folder="diffusers",
        title="SD2 inpainting, diffusers folder: scheduler/scheduler_config.json",
        urls=(f"{_HF_SD2}/{_SD2_REV}/scheduler/scheduler_config.json",),
        revision=_SD2_REV,
        size=None,
        sha256=None,
        md5=None,
        licence="CreativeML Open RAIL++-M",
        approx_size="",
        group="si2_diffusers",
        notes="stabilityai/stable-diffusion-2-inpainting (diffusers layout); for the command line",
    ),
    # size 1,417 bytes: Hugging Face blame page yahoo-inc/photo-background-generation/blame/main/controlnet/config.json
    # ("File size: 1,417 Bytes"). Small files have no published checksum -> None.
    ModelFile(
        key="controlnet_config",
        filename=f"{_PBG_SUBDIR}/config.json",
        folder="controlnet",
        title="salient-aware ControlNet (the paper's), diffusers config",
        urls=(f"{_HF_PBG}/{_PBG_REV}/controlnet/config.json",),
        revision=_PBG_REV,
        size=1417,
        sha256=None,
        md5=None,
        licence="Apache-2.0",
        approx_size="1.4 kB",
        group="controlnet",
        notes="yahoo-inc/photo-background-generation, controlnet/ folder",
        evidence=("https://huggingface.co/yahoo-inc/photo-background-generation/blame/main/controlnet/config.json",),
    ),
    # sha256: Hugging Face file page yahoo-inc/photo-background-generation/blob/main/controlnet/
    # diffusion_pytorch_model.safetensors (Git LFS details, commit 031798c, "1.46 GB"); exact size not stated -> None.
    ModelFile(
        key="controlnet_weights",
        filename=f"{_PBG_SUBDIR}/diffusion_pytorch_model.safetensors",
        folder="controlnet",
        title="salient-aware ControlNet (the paper's), weights",
        urls=(f"{_HF_PBG}/{_PBG_REV}/controlnet/diffusion_pytorch_model.safetensors",),
        revision=_PBG_REV,
        size=None,
        sha256="53e331297a0ba85067f7b23d2f98a7be79886f5e4fcb20c00cd9662fdf596084",
        md5=None,
        licence="Apache-2.0",
        approx_size="1.46 GB",
        group="controlnet",
        notes="yahoo-inc/photo-background-generation, controlnet/ folder (fp32)",
        evidence=(
            "https://huggingface.co/yahoo-inc/photo-background-generation/blob/main/controlnet/"
            "diffusion_pytorch_model.safetensors",
        ),
    ),
    # md5: transparent-background's transparent_background/config.yaml (key base.md5), unchanged from the Google
    # Drive era (commit 359fb1b) through the 1.2.10 release URL (fb74ecd) to the 1.2.12 release URL (ac5d8bb, still
    # current in 1.3.4), so both release assets are the same bytes. Size: not published for the release asset -> None.
    ModelFile(
        key="inspyrenet_base",
        filename="ckpt_base.pth",
        folder="salient",
        title="InSPyReNet (Swin-B) salient-object model, base mode (1024)",
        urls=(f"{_TB_RELEASE}/1.2.12/ckpt_base.pth", f"{_TB_RELEASE}/1.2.10/ckpt_base.pth"),
        revision="1.2.12",
        size=None,
        sha256=None,
        md5="d692e3dd5fa1b9658949d452bebf1cda",
        licence="MIT",
        approx_size="368 MB",
        group="inspyrenet_base",
        notes="plemeri/transparent-background GitHub release asset (the paper's salient model)",
        evidence=("github.com/plemeri/transparent-background transparent_background/config.yaml",),
    ),
    # md5: same config.yaml, key fast.md5 (same history as above). Size not published -> None.
    ModelFile(
        key="inspyrenet_fast",
        filename="ckpt_fast.pth",
        folder="salient",
        title="InSPyReNet (Swin-B) salient-object model, fast mode (384)",
        urls=(f"{_TB_RELEASE}/1.2.12/ckpt_fast.pth", f"{_TB_RELEASE}/1.2.10/ckpt_fast.pth"),
        revision="1.2.12",
        size=None,
        sha256=None,
        md5="9efdbfbcc49b79ef0f7891c83d2fd52f",
        licence="MIT",
        approx_size="368 MB",
        group="inspyrenet_fast",
        notes="plemeri/transparent-background GitHub release asset",
        evidence=("github.com/plemeri/transparent-background transparent_background/config.yaml",),
    ),
    # URLs: facebookresearch/segment-anything README ("Model Checkpoints"). Meta publishes no checksum; the sha256
    # and exact size are the Git LFS pointers of independent Hugging Face re-uploads of the same file name, which all
    # agree (e.g. huggingface.co/mashb1t/misc commit 78e18135 holding b, l and h; andzhang01/segment_anything
    # commits c862f425 / 99466851 / d579a94b). The md5 is the one many independent public downloaders check (code
    # search: SAM download tables in several unrelated projects and a published md5sum listing of the three files
    # agree), and its first six hex digits are the suffix Meta put in each file name (a test checks that).
    ModelFile(
        key="sam_vit_b",
        filename="sam_vit_b_01ec64.pth",
        folder="sams",
        title="Segment Anything ViT-B (mask refinement, expansion score)",
        urls=(f"{_SAM}/sam_vit_b_01ec64.pth",),
        revision=None,
        size=375042383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        md5="01ec64d29a2fca3f0661936605ae66f8",
        licence="Apache-2.0",
        approx_size="375 MB",
        group="sam_vit_b",
        notes="Meta (facebookresearch/segment-anything); the default SAM",
        evidence=(
            "https://huggingface.co/mashb1t/misc/commit/78e181357bf2e286bf2e76635c0b5cd89583c5d9",
            "https://huggingface.co/andzhang01/segment_anything/commit/c862f42541f40f5a5830d8d2551199e7d9358297",
        ),
    ),
    ModelFile(
        key="sam_vit_l",
        filename="sam_vit_l_0b3195.pth",
        folder="sams",
        title="Segment Anything ViT-L",
        urls=(f"{_SAM}/sam_vit_l_0b3195.pth",),
        revision=None,
        size=1249524607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        md5="0b3195507c641ddb6910d2bb5adee89c",
        licence="Apache-2.0",
        approx_size="1.25 GB",
        group="sam_vit_l",
        notes="Meta (facebookresearch/segment-anything); on request",
        evidence=(
            "https://huggingface.co/mashb1t/misc/commit/78e181357bf2e286bf2e76635c0b5cd89583c5d9",
            "https://huggingface.co/andzhang01/segment_anything/commit/99466851cb3f441191094596ec2396dd38cee644",
        ),
    ),
    ModelFile(
        key="sam_vit_h",
        filename="sam_vit_h_4b8939.pth",
        folder="sams",
        title="Segment Anything ViT-H",
        urls=(f"{_SAM}/sam_vit_h_4b8939.pth",),
        revision=None,
        size=2564550879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
        licence="Apache-2.0",
        approx_size="2.56 GB",
        group="sam_vit_h",
        notes="Meta (facebookresearch/segment-anything); on request",
        evidence=(
            "https://huggingface.co/mashb1t/misc/commit/78e181357bf2e286bf2e76635c0b5cd89583c5d9",
            "https://huggingface.co/andzhang01/segment_anything/commit/d579a94be8a2b17e806578b86bb02bcd82ab66a6",
        ),
    ),
) + _SD15_ROWS + _SDXL_ROWS + _METRIC_ROWS

BY_KEY: dict[str, ModelFile] = {m.key: m for m in MODEL_FILES}

# Names accepted on the command line (after lower-casing and '-' -> '_'), each a list of file keys.
GROUPS: dict[str, tuple[str, ...]] = {}
for _m in MODEL_FILES:
    GROUPS.setdefault(_m.group, ())
    GROUPS[_m.group] += (_m.key,)
# the diffusers folder's config and tokenizer files, without its weights (see models/generation/model_plan.py SINGLE_FILE_CONFIG_FILES)
SI2_CONFIG_KEYS: tuple[str, ...] = tuple(
    k for k in GROUPS["si2_diffusers"] if not BY_KEY[k].filename.endswith(".safetensors")
)
ALIASES: dict[str, tuple[str, ...]] = {
    "sd2": GROUPS["sd2_inpainting"],
    "checkpoint": GROUPS["sd2_inpainting"],
    "inspyrenet": GROUPS["inspyrenet_base"] + GROUPS["inspyrenet_fast"],
    "salient": GROUPS["inspyrenet_base"] + GROUPS["inspyrenet_fast"],
    "sam": GROUPS["sam_vit_b"],
    "vit_b": GROUPS["sam_vit_b"],
    "vit_l": GROUPS["sam_vit_l"],
    "vit_h": GROUPS["sam_vit_h"],
    "sd2_diffusers": GROUPS["si2_diffusers"],
    "sd15": GROUPS["sd15_inpainting"],
    "sdxl": GROUPS["sdxl_diffusers"],
    # every image-quality metric's model (evaluate's table)
    "metrics": GROUPS["metrics_inception"] + GROUPS["metrics_lpips_alexnet"] + GROUPS["metrics_clip"]
    + GROUPS["metrics_dinov2"],
    # the small files of the diffusers folder (~1.6 MB) that let the command line read the single-file checkpoint
    "sd2_configs": SI2_CONFIG_KEYS,
    # what each job needs
    "mask": GROUPS["inspyrenet_base"],
    # the command line's generate (+ evaluate's expansion score): SD2 as a diffusers folder
    "generate": GROUPS["si2_diffusers"] + GROUPS["controlnet"] + GROUPS["inspyrenet_base"] + GROUPS["sam_vit_b"],
    # the ComfyUI workflows: SD2 as one checkpoint file
    "comfyui": GROUPS["sd2_inpainting"] + GROUPS["controlnet"] + GROUPS["inspyrenet_base"] + GROUPS["inspyrenet_fast"]
    + GROUPS["sam_vit_b"],
    "default": GROUPS["sd2_inpainting"] + GROUPS["controlnet"] + GROUPS["inspyrenet_base"] + GROUPS["inspyrenet_fast"]
    + GROUPS["sam_vit_b"],
    "all": tuple(m.key for m in MODEL_FILES),
    # `python -m salient_background demo`: the single file ComfyUI uses + its configs (not the 5 GB diffusers copy)
    "demo": GROUPS["sd2_inpainting"] + SI2_CONFIG_KEYS + GROUPS["controlnet"] + GROUPS["inspyrenet_base"]
    + GROUPS["sam_vit_b"],
}
DEFAULT_SELECTION = ("default",)


def cli_name(name: str) -> str:
    """How every message and ``download --help`` spell a name: dashes (``sam-vit-h``), never underscores.
    (:func:`select` accepts both.)"""
    return name.replace("_", "-")


def selection_names() -> list[str]:
    """Every name :func:`select` accepts, spelled as the command line shows them (:func:`cli_name`)."""
    return sorted({cli_name(n) for n in set(GROUPS) | set(ALIASES) | set(BY_KEY)})


def select(names) -> list[ModelFile]:
    """Files for command-line names (groups, aliases, file keys); order of the table, no duplicates."""
    wanted: set[str] = set()
    unknown = []
    for raw in names or DEFAULT_SELECTION:
        name = raw.strip().lower().replace("-", "_")
        keys = ALIASES.get(name) or GROUPS.get(name) or ((name,) if name in BY_KEY else None)
        if keys is None:
            unknown.append(raw)
        else:
            wanted.update(keys)
    if unknown:
        from ..errors import InputError

        raise InputError(
            f"unknown model name(s): {', '.join(unknown)}. Choose from: {', '.join(selection_names())}"
        )
    return [m for m in MODEL_FILES if m.key in wanted]


def lookup(key_or_filename: str) -> list[ModelFile]:
    """Rows for a registry key, a group/alias, a file name (with or without its sub-folder) or the ControlNet's
    sub-folder name. Empty when the name is not ours (a user's own file)."""
    if not key_or_filename:
        return []
    name = key_or_filename.replace("\\", "/").strip("/")
    norm = name.lower().replace("-", "_")
    if norm in BY_KEY:
        return [BY_KEY[norm]]
    if norm in GROUPS or norm in ALIASES:
        return select([norm])
    if "/" in name:  # a path inside a model folder: the whole of it must be ours
        return [m for m in MODEL_FILES if m.filename == name]
    hits = [m for m in MODEL_FILES if m.basename == name and "/" not in m.filename]
    # the ControlNet's sub-folder name stands for its files
    return hits or [m for m in MODEL_FILES if "/" in m.filename and m.filename.split("/", 1)[0] == name]


def download_command(entries) -> str:
    """The exact command that fetches ``entries`` (group names when a whole group is wanted)."""
    keys = [m.key for m in entries]
    names = []
    for m in entries:
        group = GROUPS[m.group]
        name = m.group if all(k in keys for k in group) else m.key
        if name not in names:
            names.append(name)
    return "python -m salient_background download " + " ".join(cli_name(n) for n in names)


def _entries(names_or_entries) -> list[ModelFile]:
    if isinstance(names_or_entries, (str, ModelFile)):
        names_or_entries = [names_or_entries]
    entries: list[ModelFile] = []
    for item in names_or_entries:
        for m in [item] if isinstance(item, ModelFile) else lookup(item):
            if m not in entries:
                entries.append(m)
    return entries


def manual_alternative(names_or_entries, target_dir: str | None = None) -> str:
    """"Manual alternative: download <URL> in a browser and save it as <path>." for each file (``target_dir`` is
    the model folder it goes in; without it, the default ComfyUI/models/<folder>)."""
    steps = []
    for m in _entries(names_or_entries):
        where = (os.path.join(target_dir, *m.filename.split("/")) if target_dir
                 else f"ComfyUI/models/{m.folder}/{m.filename}")
        steps.append(f"download {m.urls[0]} in a browser and save it as {where}")
    return "Manual alternative: " + "; ".join(steps) + "."


def where_to_get(names_or_entries, *, target_dir: str | None = None, command_args: str = "") -> str:
    """The one "where to get this file" hint of the pack, for published files (registry keys, groups, aliases, file
    names or rows): the exact download command, then the manual alternative. Every message that tells a person
    where a model file comes from is built here, so the table above is the only place URLs and names live."""
    entries = _entries(names_or_entries)
    if not entries:
        return ("It is not one of the pack's published files; `python -m salient_background download --list` "
                "lists those.")
    extra = f" {command_args}" if command_args else " (add --models-dir DIR if ComfyUI is not around the pack)"
    return f"Get it with: {download_command(entries)}{extra}. {manual_alternative(entries, target_dir)}"


def _check_cell(files) -> str:
    if len(files) == 1:
        m = files[0]
        if m.sha256:
            return f"sha256 `{m.sha256[:12]}…`"
        if m.md5:
            return f"md5 `{m.md5[:12]}…`"
        return "unverified" if m.size is None else "size only"
    checked = [m.filename.split("/", 1)[-1] for m in files if m.verified]
    return (f"sha256 of {', '.join(checked)}; the other files unverified" if checked else "unverified")


def render_markdown_table() -> str:
    """The README's models table (the README holds exactly this text; tests/test_download.py checks it).

    A group of more than two files sharing a sub-folder (a diffusers folder) is one row."""
    lines = [
        "| model | file | ComfyUI folder | size | checksum | source | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    done = set()
    for m in MODEL_FILES:
        if m.key in done:
            continue
        files = [BY_KEY[k] for k in GROUPS[m.group]]
        subdir = m.filename.split("/", 1)[0] if "/" in m.filename else None
        if len(files) > 2 and subdir and all(f.filename.startswith(subdir + "/") for f in files):
            done.update(f.key for f in files)
            total = sum(f.expected_bytes() or 0 for f in files)
            weights_known = all(f.expected_bytes() is not None for f in files if f.filename.endswith(WEIGHT_FILE_SUFFIXES))
            size = f"~{human_size(total)}" if weights_known else "unknown"
            title = m.title.split(":", 1)[0]  # "<model>, diffusers folder" (or another kind of folder)
            url = m.urls[0].rsplit("/resolve/", 1)[0] + "/tree/" + (m.revision or "main")
            lines.append(
                f"| {title} ({len(files)} files) | `{subdir}/` | `models/{FOLDER_DEFAULT_SUBDIRS[m.folder]}` | "
                f"{size} | {_check_cell(files)} | [{_host(m.urls[0])}]({url}) | {m.licence} |"
            )
            continue
        done.add(m.key)
        size = m.display_size()
        lines.append(
            f"| {m.title} | `{m.filename}` | `models/{FOLDER_DEFAULT_SUBDIRS[m.folder]}` | {size} | {_check_cell([m])} | "
            f"[{_host(m.urls[0])}]({m.urls[0]}) | {m.licence} |"
        )
    return "\n".join(lines)


def _host(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.netloc == "huggingface.co":
        return "/".join(parsed.path.strip("/").split("/")[:2])  # owner/repo
    if parsed.netloc == "github.com":
        return "/".join(parsed.path.strip("/").split("/")[:2]) + " release"
    return parsed.netloc
