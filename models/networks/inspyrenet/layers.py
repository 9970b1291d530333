"""Building blocks of the InSPyReNet decoder: conv+BN units, axial self-attention, the image pyramid.

Attribute names (``conv``/``bn``, ``query_conv``/``key_conv``/``value_conv``/``gamma``) follow the official
checkpoint keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import fold_batchnorm, to_channels_last


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class ConvBN(nn.Module):
    """Bias-free convolution with 'same' padding, then BatchNorm (optional), then ReLU (optional)."""

    def __init__(self, cin: int, cout: int, kernel_size, dilation=1, bn: bool = True, relu: bool = False):
        super().__init__()
        k, d = _pair(kernel_size), _pair(dilation)
        padding = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        self.conv = nn.Conv2d(cin, cout, k, 1, padding, d, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            return F.relu(x) if self.relu else x
        weight, bias = self.folded_weights()
        conv = self.conv
        x = F.conv2d(to_channels_last(x), weight, bias, conv.stride, conv.padding, conv.dilation)
        return F.relu_(x) if self.relu else x

    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the single convolution that equals conv + eval-mode BatchNorm (recomputed per
        call: it costs a pass over the weights, not over the image)."""
        if self.bn is None:
            return self.conv.weight, None
        return fold_batchnorm(self.conv.weight, self.bn)


class AxialSelfAttention(nn.Module):
    """Self-attention along one axis ('h' or 'w'), residual-scaled by a learned ``gamma``.

    As in the reference, the [B,C,H,W] projections are *reinterpreted* (row-major reshape, not permuted) as
    [B, C*H*W/L, L] with L the axis length; the trained weights expect exactly this.
    """

    def __init__(self, channels: int, axis: str):
        super().__init__()
        if axis not in ("h", "w"):
            raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
        self.axis = axis
        self.query_conv = ConvBN(channels, channels // 8, 1)
        self.key_conv = ConvBN(channels, channels // 8, 1)
        self.value_conv = ConvBN(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        length = h if self.axis == "h" else w
        query = self.query_conv(x).reshape(b, -1, length).permute(0, 2, 1)
        key = self.key_conv(x).reshape(b, -1, length)
        attention = torch.bmm(query, key).softmax(dim=-1)
        value = self.value_conv(x).reshape(b, -1, length)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


def gaussian_kernel_2d(size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Normalised separable Gaussian (what ``cv2.getGaussianKernel`` gives for sigma > 0), outer product,
    computed in float64 and returned as float32 [size, size]."""
    centre = (size - 1) / 2
    k = torch.tensor([math.exp(-((i - centre) ** 2) / (2 * sigma * sigma)) for i in range(size)], dtype=torch.float64)
    k = k / k.sum()
    return torch.outer(k, k).float()


class ImagePyramid(nn.Module):
    """Laplacian-pyramid reconstruction with a fixed 7x7 Gaussian (sigma 1).

    The kernel is a non-persistent buffer: it follows ``.to()`` but is not part of the checkpoint.
    """

    def __init__(self, ksize: int = 7, sigma: float = 1.0):
        super().__init__()
        self.ksize = ksize
        self.sigma = sigma
        self.register_buffer("kernel", gaussian_kernel_2d(ksize, sigma)[None, None], persistent=False)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Double the resolution: zero-insertion upsampling then Gaussian smoothing (x4 gain)."""
        z = torch.zeros_like(x)
        x = F.pixel_shuffle(torch.cat([x, z, z, z], dim=1), 2)
        x = F.pad(x, (self.ksize // 2,) * 4, mode="reflect")
        return F.conv2d(x, self.kernel.to(x.dtype) * 4)

    def reconstruct(self, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
        expanded = self.expand(x)
        if laplacian.shape[-2:] != expanded.shape[-2:]:
            laplacian = F.interpolate(laplacian, expanded.shape[-2:], mode="bilinear", align_corners=True)
        return expanded + laplacian
