"""Convolutions over few output positions run as one matrix product, during a pipeline call, on the CPU.

At the UNet's and the ControlNet's deepest levels (4x4 and 8x8 latents for a 256x256 image; 8x8 for 512x512) a
3x3 convolution has 1280 channels in and out but only a few dozen output positions: its 59 MB weight dominates the
work. PyTorch's oneDNN convolution rearranges that weight into its own layout at every call (the activations are
plain NCHW tensors), which there costs about as much as the arithmetic; ``unfold`` + one ``F.linear`` reads the
weight once, as stored (about 2.3x faster for a 1280-channel 3x3 convolution at 4x4, batch 2, 1 thread; given the
weight already in its layout, oneDNN's convolution is as fast, which shows where its time goes).
The result is the same convolution within float rounding (both sum the same products in a different order).

:func:`small_convolutions_as_matmul` switches this on for the convolutions of some networks for the duration of a
``with`` block and leaves the modules exactly as they were on exit; outside the block (another pipeline on the same
modules, training) nothing changes. Larger convolutions, and any not on the CPU, take PyTorch's own path.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

# output positions per image (height x width) up to which the matrix product is faster. Measured (AVX-512 Xeon,
# fp32, 1 thread), 1280-channel 3x3 at batch 2, oneDNN vs matrix product: 4x4 44 vs 19 ms, 8x8 61 vs 45 ms, 16x16
# 130 vs 163 ms (slower). The limit and the product are per image so that an image never depends on the batch it
# was made in (a resumed catalogue run batches photos differently; the same seed must give the same picture).
MAX_OUTPUT_POSITIONS = 64


def output_positions(conv: torch.nn.Conv2d, x: torch.Tensor) -> int:
    """Height x width of ``conv(x)`` (per image)."""
    _, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1) * ((w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def conv2d_as_matmul(conv: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """``conv``'s convolution of ``x`` (NCHW) with ``weight``/``bias`` as unfold + one matrix product per image
    (the same sums whatever the batch); NCHW out."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    _, _, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    flat_weight = weight.reshape(weight.shape[0], -1)
    outputs = []
    for image in x.split(1):
        columns = F.unfold(image, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))  # [1, c*kh*kw, ho*wo]
        outputs.append(F.linear(columns[0].t(), flat_weight, bias))  # [ho*wo, out]
    return torch.stack(outputs).view(x.shape[0], ho, wo, -1).permute(0, 3, 1, 2).contiguous()


def _conv_forward(conv: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Stands in for ``nn.Conv2d._conv_forward`` (which ``forward`` calls with the module's current weight, so
    offloading hooks that move the weight keep working)."""
    if x.dim() == 4 and x.device.type == "cpu" and output_positions(conv, x) <= MAX_OUTPUT_POSITIONS:
        return conv2d_as_matmul(conv, x, weight, bias)
    return type(conv)._conv_forward(conv, x, weight, bias)


def _eligible(module: torch.nn.Module) -> bool:
    """A plain 2-D convolution with a spatial kernel (1x1 convolutions are a matrix product already)."""
    return (isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and tuple(module.kernel_size) != (1, 1)
            and "_conv_forward" not in vars(module))


@contextlib.contextmanager
def small_convolutions_as_matmul(*networks):
    """Within the block, the 3x3 (and other non-1x1) convolutions of ``networks`` (``None`` entries skipped) run
    as :func:`conv2d_as_matmul` whenever their output has at most :data:`MAX_OUTPUT_POSITIONS` positions on the
    CPU; restored on exit, also when the block raises."""
    patched = []
    try:
        for network in networks:
            for module in network.modules() if network is not None else ():
                if _eligible(module):
                    module._conv_forward = types.MethodType(_conv_forward, module)
                    patched.append(module)
        yield
    finally:
        for module in patched:
            del module._conv_forward
