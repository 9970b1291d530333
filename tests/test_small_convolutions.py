"""Convolutions over few output positions as one matrix product (models.generation.small_convolutions).

The matrix product must be the same convolution (checked in float64 against ``F.conv2d`` for strides, paddings,
dilations, rectangular kernels, with and without bias), take over only small outputs on the CPU while the block is
open, and leave every module exactly as it was afterwards (also when the block raises).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salient_background.models.generation import small_convolutions as sc


@pytest.mark.parametrize("kernel, stride, padding, dilation, bias", [
    (3, 1, 1, 1, True),
    (3, 2, 1, 1, True),  # the UNet's downsamplers
    (3, 1, 0, 1, False),
    ((3, 1), (1, 2), (1, 0), 1, True),
    (3, 1, 2, 2, True),
])
def test_matmul_is_the_same_convolution(kernel, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    x = torch.randn(3, 6, 7, 9, dtype=torch.float64)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    got = sc.conv2d_as_matmul(conv, x, conv.weight, conv.bias)
    assert got.shape == expected.shape
    assert got.is_contiguous()
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert sc.output_positions(conv, x) == expected.shape[2] * expected.shape[3]


def test_an_image_is_the_same_whatever_batch_it_is_in():
    """A resumed catalogue run batches photos differently: the same image must come out bit for bit."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(64, 48, 3, padding=1)
    x = torch.randn(4, 64, 8, 8)
    together = sc.conv2d_as_matmul(conv, x, conv.weight, conv.bias)
    for i in range(4):
        assert torch.equal(sc.conv2d_as_matmul(conv, x[i:i + 1], conv.weight, conv.bias)[0], together[i])


def _counting(monkeypatch):
    calls = []
    real = sc.conv2d_as_matmul

    def counted(conv, x, weight, bias):
        calls.append(tuple(x.shape))
        return real(conv, x, weight, bias)

    monkeypatch.setattr(sc, "conv2d_as_matmul", counted)
    return calls


def test_only_small_outputs_take_the_matmul_inside_the_block(monkeypatch):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1))
    small = torch.randn(2, 8, 8, 8)  # 8 x 8 = 64 output positions per image: the limit
    large = torch.randn(2, 8, 9, 8)  # 72 positions
    before_small, before_large = net(small), net(large)
    calls = _counting(monkeypatch)
    with torch.no_grad(), sc.small_convolutions_as_matmul(net, None):
        inside_small, inside_large = net(small), net(large)
    assert calls == [(2, 8, 8, 8)]  # the 3x3 on the small input only; 1x1 convolutions are left alone
    assert torch.allclose(inside_small, before_small, rtol=0, atol=1e-5)
    assert torch.equal(inside_large, before_large)  # PyTorch's own path, bit for bit
    assert all("_conv_forward" not in vars(m) for m in net.modules())
    calls.clear()
    net(small)
    assert calls == []  # off after the block


def test_restored_when_the_block_raises_and_when_nested():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(KeyboardInterrupt):
        with sc.small_convolutions_as_matmul(net):
            with sc.small_convolutions_as_matmul(net):  # the inner block leaves the outer one's patch alone
                pass
            assert "_conv_forward" in vars(net[0])
            raise KeyboardInterrupt
    assert "_conv_forward" not in vars(net[0])


def test_offloading_style_forward_wrappers_survive(monkeypatch):
    """Hooks that replace a module's ``forward`` (accelerate's offloading) are neither removed nor bypassed."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    seen = []
    plain_forward = conv.forward

    def hooked(x):
        seen.append(x.shape)
        return plain_forward(x)

    conv.forward = hooked
    calls = _counting(monkeypatch)
    with torch.no_grad(), sc.small_convolutions_as_matmul(conv):
        conv(torch.randn(1, 4, 4, 4))
    assert seen == [(1, 4, 4, 4)] and calls == [(1, 4, 4, 4)]
    assert conv.forward is hooked
