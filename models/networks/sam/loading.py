"""Loading Meta's Segment Anything (v1) checkpoints, with the architecture read from the weights.

Meta's released files (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) are plain
state dicts of ``segment_anything.modeling.Sam``. The file name is never trusted: every hyper-parameter of the
image encoder is recovered from tensor shapes (embedding width from the patch embedding, depth from the block
count, head count from the relative-position tables, which blocks attend globally from the length of those
tables), so a renamed file, a fine-tune with the same layout, or the small random models of the tests all load
through the same code. ``detect_sam_architecture`` only reads shapes, so it also works on ``meta`` tensors.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Mapping

import torch

from ..checkpoint_io import describe_keys, load_state_dict, unwrap_state_dict
from ...errors import CheckpointError
from ...model_files.model_registry import where_to_get

# the model registry is the one source of "where to get this file" (ViT-L and ViT-H: `download --list`)
WHERE_TO_GET = where_to_get("sam")

# (embed_dim, depth, num_heads, global_attn_indexes) of the official encoders; image 1024, patch 16, window 14
OFFICIAL_VARIANTS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArchitecture:
    """Everything needed to build the ``Sam`` module that a state dict belongs to."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def variant(self) -> str:
        """``vit_b``/``vit_l``/``vit_h`` when every hyper-parameter matches Meta's, otherwise ``custom``."""
        official = dict(img_size=1024, patch_size=16, window_size=14, mlp_ratio=4.0, prompt_embed_dim=256,
                        mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=2048, num_multimask_outputs=3,
                        iou_head_depth=3, iou_head_hidden_dim=256)
        if any(getattr(self, k) != v for k, v in official.items()):
            return "custom"
        for name, (dim, depth, heads, glob) in OFFICIAL_VARIANTS.items():
            if (self.embed_dim, self.depth, self.num_heads, self.global_attn_indexes) == (dim, depth, heads, glob):
                return name
        return "custom"

    def describe(self) -> str:
        return (f"{self.variant} (embed {self.embed_dim}, depth {self.depth}, heads {self.num_heads}, "
                f"image {self.img_size}, patch {self.patch_size})")


def official_architecture(variant: str) -> SamArchitecture:
    dim, depth, heads, glob = OFFICIAL_VARIANTS[variant]
    return SamArchitecture(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=glob, window_size=14)


def _foreign_layout_hint(keys) -> str:
    keys = list(keys)
    if any(k.startswith("image_encoder.trunk.") or k.startswith("sam_mask_decoder.") for k in keys):
        return " It looks like a SAM 2 checkpoint, which this loader does not read; use a SAM (v1) file."
    if any("mask_decoder.hf_token" in k or "hf_mlp" in k for k in keys):
        return " It looks like an HQ-SAM checkpoint, which this loader does not read; use Meta's original SAM file."
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return " It looks like a MobileSAM (TinyViT) checkpoint, which this loader does not read."
    if any(k.startswith("vision_encoder.") for k in keys):
        return " It looks like a Hugging Face transformers SamModel; use Meta's original .pth file instead."
    return ""


def detect_sam_architecture(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> SamArchitecture:
    """Read the architecture from tensor shapes (works on ``meta`` tensors). Raises :class:`CheckpointError`
    naming what is missing when the dict is not a SAM (v1) state dict."""
    required = ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed", "image_encoder.neck.0.weight",
                "mask_decoder.mask_tokens.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} is not a Segment Anything (v1) checkpoint: it lacks {', '.join(missing)} "
            f"(its keys: {describe_keys(state.keys())}).{_foreign_layout_hint(state.keys())} {WHERE_TO_GET}"
        )
    patch = state["image_encoder.patch_embed.proj.weight"].shape  # [D, 3, p, p]
    embed_dim, patch_size = int(patch[0]), int(patch[-1])
    grid = int(state["image_encoder.pos_embed"].shape[1])
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    if not block_ids or block_ids != list(range(len(block_ids))):
        raise CheckpointError(f"{source}: image encoder blocks are missing or not numbered 0..N-1 ({block_ids[:5]}...)")
    global_idx, windows, head_dim = [], set(), None
    for i in block_ids:
        rel = state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if rel is None:
            raise CheckpointError(f"{source}: block {i} has no relative position table (attn.rel_pos_h); "
                                  "only SAM encoders with relative positions are supported")
        length, hd = int(rel.shape[0]), int(rel.shape[1])
        head_dim = head_dim or hd
        if length == 2 * grid - 1:
            global_idx.append(i)
        else:
            windows.add((length + 1) // 2)
    if len(windows) > 1:
        raise CheckpointError(f"{source}: blocks use different window sizes {sorted(windows)}")
    window = windows.pop() if windows else 0
    lin1 = state.get("image_encoder.blocks.0.mlp.lin1.weight")
    mlp_ratio = float(lin1.shape[0]) / embed_dim if lin1 is not None else 4.0
    decoder_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
    iou_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))}
    dec_lin1 = state.get("mask_decoder.transformer.layers.0.mlp.lin1.weight")
    iou0 = state.get("mask_decoder.iou_prediction_head.layers.0.weight")
    mask_conv = state.get("prompt_encoder.mask_downscaling.3.weight")
    return SamArchitecture(
        embed_dim=embed_dim,
        depth=len(block_ids),
        num_heads=max(1, embed_dim // head_dim),
        global_attn_indexes=tuple(global_idx),
        window_size=window,
        img_size=grid * patch_size,
        patch_size=patch_size,
        mlp_ratio=mlp_ratio,
        prompt_embed_dim=int(state["image_encoder.neck.0.weight"].shape[0]),
        mask_in_chans=int(mask_conv.shape[0]) if mask_conv is not None else 16,
        decoder_depth=len(decoder_layers) or 2,
        decoder_mlp_dim=int(dec_lin1.shape[0]) if dec_lin1 is not None else 2048,
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=len(iou_layers) or 3,
        iou_head_hidden_dim=int(iou0.shape[0]) if iou0 is not None else 256,
    )


def build_sam(arch: SamArchitecture, device: torch.device | str | None = None):
    """Build an (untrained) ``segment_anything`` ``Sam`` module of this architecture, in eval mode."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    emb = arch.img_size // arch.patch_size
    with torch.device(device or "cpu"):
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size, mlp_ratio=arch.mlp_ratio,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads,
                patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
                global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
                out_chans=arch.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=arch.prompt_embed_dim, image_embedding_size=(emb, emb),
                input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=arch.num_multimask_outputs,
                transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                              mlp_dim=arch.decoder_mlp_dim, num_heads=8),
                transformer_dim=arch.prompt_embed_dim, iou_head_depth=arch.iou_head_depth,
                iou_head_hidden_dim=arch.iou_head_hidden_dim,
            ),
            pixel_mean=list(_PIXEL_MEAN),
            pixel_std=list(_PIXEL_STD),
        )
    return sam.eval()


@dataclass
class LoadedSam:
    """A SAM network with what was learnt about it while loading."""

    model: torch.nn.Module
    architecture: SamArchitecture
    path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return self.architecture.variant


def sam_from_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> LoadedSam:
    """Build the matching ``Sam`` without a random initialisation (meta device) and load the weights strictly."""
    state = unwrap_state_dict(state)
    arch = detect_sam_architecture(state, source=source)
    model = build_sam(arch, device="meta")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source} looks like a SAM {arch.describe()} but its weights do not fit that network: {exc}."
            f"{_foreign_layout_hint(state.keys())} {WHERE_TO_GET}"
        ) from exc
    # non-persistent buffers are not in the file: create them for real
    model.pixel_mean = torch.tensor(_PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1)
    model.pixel_std = torch.tensor(_PIXEL_STD, dtype=torch.float32).view(-1, 1, 1)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors left uninitialised after loading: {describe_keys(leftover)}")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedSam(model=model, architecture=arch, path=source)


def load_sam(path: str | os.PathLike) -> LoadedSam:
    """Load a SAM (v1) checkpoint (``.pth`` with ``weights_only=True``, or ``.safetensors``) on the CPU."""
    path = os.fspath(path)
    state = load_state_dict(path, what="SAM checkpoint")
    loaded = sam_from_state_dict(state, source=f"SAM checkpoint {os.path.basename(path)!r}")
    loaded.path = path
    return loaded
