"""Swin Transformer backbone (Swin-B, window 12) laid out like the InSPyReNet checkpoints.

Parameter names follow the official ``ckpt_base.pth`` / ``ckpt_fast.pth`` files (``backbone.patch_embed.*``,
``backbone.layers.N.blocks.M.*``, ``backbone.normN.*``), so those files load with strict key matching.
The forward pass reproduces the reference numerics: features padded to whole windows, cyclic shift with a
-100 attention mask on every other block (also when the feature map is smaller than one window), and
five outputs: the patch embedding and the four normalised stage outputs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import Linear, onednn_applies, to_channels_last

SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)


def relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] int64 index into the (2w-1)^2 relative-position bias table (the standard Swin layout).
    Always computed on the CPU (also inside a ``torch.device("meta")`` block)."""
    return _relative_position_index(window).clone()


@functools.lru_cache(maxsize=4)
def _relative_position_index(window: int) -> torch.Tensor:
    r = torch.arange(window, device="cpu")
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def _to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B,H,W,C] (H, W multiples of window) -> [B*nW, window*window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _from_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: [B*nW, window*window, C] -> [B,H,W,C]."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent: the official checkpoints carry it (its value is always the computed one).
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = Linear(dim, dim * 3)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T * scale + bias [+ shift mask]) v per window and head, as one fused kernel."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        bias = bias.permute(2, 0, 1).unsqueeze(0).to(q.dtype)  # [1, heads, n, n]
        if mask is None:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:  # the shift mask differs per window: one call per image of the batch
            nw = mask.shape[0]
            bias = bias + mask.unsqueeze(1).to(q.dtype)  # [nW, heads, n, n]
            parts = [
                F.scaled_dot_product_attention(q[i:i + nw], k[i:i + nw], v[i:i + nw], attn_mask=bias, scale=self.scale)
                for i in range(0, bw, nw)
            ]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.proj(x.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (self.window - w % self.window) % self.window
        pad_b = (self.window - h % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = self.attn(_to_windows(x, self.window), mask if self.shift > 0 else None)
        x = _from_windows(x, self.window, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_r or pad_b:
            x = x[:, :h, :w, :]
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def _shift_mask(h: int, w: int, window: int, shift: int, device, dtype) -> torch.Tensor:
    """[nW, window^2, window^2] additive mask (0 / -100) keeping shifted windows from mixing regions."""
    hp = -(-h // window) * window
    wp = -(-w // window) * window
    regions = torch.zeros((1, hp, wp, 1), device=device, dtype=dtype)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in slices:
        for ws in slices:
            regions[:, hs, ws, :] = label
            label += 1
    regions = _to_windows(regions, window).squeeze(-1)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, downsample: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = _shift_mask(h, w, self.window, self.shift, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if w % self.patch:
            x = F.pad(x, (0, self.patch - w % self.patch))
        if h % self.patch:
            x = F.pad(x, (0, 0, 0, self.patch - h % self.patch))
        x = self.proj(x)
        b, c, hh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.view(b, hh, ww, c).permute(0, 3, 1, 2)  # [B,C,H,W] in NHWC memory: the token order


class SwinTransformer(nn.Module):
    """Returns (patch embedding, stage 1..4 outputs) as [B,C,H,W] maps at strides 4, 4, 8, 16, 32."""

    def __init__(self, embed_dim: int, depths, num_heads, window_size: int):
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dim)
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(self.num_features[i], depths[i], num_heads[i], window_size, downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor):
        x = self.patch_embed(x)
        h, w = x.shape[2], x.shape[3]
        outs = [_feature_map(x)]
        x = x.flatten(2).transpose(1, 2)
        for i, layer in enumerate(self.layers):
            out, x, nh, nw = layer(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(_feature_map(out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2)))
            h, w = nh, nw
        return tuple(outs)


def _feature_map(x: torch.Tensor) -> torch.Tensor:
    """A [B,C,H,W] view of tokens: left in NHWC memory where the decoder's convolutions want it, else NCHW."""
    return to_channels_last(x) if onednn_applies(x) else x.contiguous()


def swin_b() -> SwinTransformer:
    return SwinTransformer(**SWIN_B)
