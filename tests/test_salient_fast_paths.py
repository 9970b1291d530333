"""The InSPyReNet inference fast paths compute what the textbook ops compute.

Each fast path (oneDNN 1x1 convolution for ``nn.Linear``, fused window attention, BatchNorm folded into the
convolution, SICA's context convolution done on the similarity maps) is compared with the plain formula it
replaces, on random tensors and small modules, batch > 1 included (the per-image loops).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salient_background.models.networks.inspyrenet.cpu_kernels import Linear, linear, onednn_applies
from salient_background.models.networks.inspyrenet.layers import ConvBN
from salient_background.models.networks.inspyrenet.modules import SICA
from salient_background.models.networks.inspyrenet.swin import WindowAttention, _shift_mask, _to_windows


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_fast_paths_apply_on_cpu_float32():
    assert onednn_applies(torch.zeros(2, 3)) == torch.backends.mkldnn.is_available()
    assert not onednn_applies(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 16), (3, 1, 4, 16)])
def test_linear_matches_f_linear(shape):
    x = torch.randn(shape)
    weight, bias = torch.randn(24, 16), torch.randn(24)
    out = linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 24)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear(x, weight, None), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_linear_on_non_contiguous_and_bfloat16_input():
    x = torch.randn(16, 9).t()  # [9, 16], transposed view
    weight, bias = torch.randn(8, 16), torch.randn(8)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    out = linear(xb, wb, bb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(xb, wb, bb).float(), rtol=2e-2, atol=5e-2)


def test_linear_module_keeps_nn_linear_state_dict():
    layer = Linear(16, 8)
    assert set(layer.state_dict()) == {"weight", "bias"} and isinstance(layer, torch.nn.Linear)


@pytest.mark.parametrize("kernel,dilation,relu", [(3, 1, True), ((1, 5), 1, False), (3, 3, False)])
def test_eval_convbn_equals_conv_then_batchnorm(kernel, dilation, relu):
    block = ConvBN(6, 10, kernel, dilation=dilation, relu=relu)
    with torch.no_grad():
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.normal_()
        block.bn.bias.normal_()
    block.eval()
    x = torch.randn(2, 6, 13, 17)
    expected = block.bn(block.conv(x))  # eval-mode BatchNorm: running statistics
    expected = F.relu(expected) if relu else expected
    out = block(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def _textbook_window_attention(module: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None):
    bw, n, c = x.shape
    qkv = F.linear(x, module.qkv.weight, module.qkv.bias)
    q, k, v = qkv.reshape(bw, n, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
    attn = (q * module.scale) @ k.transpose(-2, -1)
    bias = module.relative_position_bias_table[module.relative_position_index.view(-1)].view(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(bw // nw, nw, module.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(bw, -1, n, n)
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return F.linear(out, module.proj.weight, module.proj.bias)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_textbook_formula(shifted):
    window, dim, batch = 4, 16, 2
    module = WindowAttention(dim, window, num_heads=2).eval()
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    mask = _shift_mask(8, 12, window, window // 2, "cpu", torch.float32) if shifted else None  # 6 windows
    x = _to_windows(torch.randn(batch, 8, 12, dim), window)  # [batch * 6, 16, dim]
    with torch.no_grad():
        torch.testing.assert_close(module(x, mask), _textbook_window_attention(module, x, mask), rtol=1e-5, atol=1e-5)


def test_sica_context_conv_on_similarity_maps_equals_conv_of_context():
    sica = SICA(8, 8, (64, 64), stage=3, lmap_in=True)
    sica.conv_out1.bn.running_mean.normal_()
    sica.conv_out1.bn.running_var.uniform_(0.5, 2.0)
    sica.eval()
    b, h, w = 2, 6, 10
    sim = torch.randn(b, h * w, sica.ctx).softmax(-1)
    value = torch.randn(b, 8, sica.ctx)
    context = torch.bmm(sim, value.transpose(1, 2)).transpose(1, 2).reshape(b, 8, h, w)
    with torch.no_grad():
        expected = sica.conv_out1(context)
        out = sica._attend_and_convolve(sim, value, h, w)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        sica.train()  # the training path builds the context map (batch statistics: only the shape compares)
        assert sica._attend_and_convolve(sim, value, h, w).shape == out.shape


def test_sica_forward_batch_of_two_equals_each_image_alone():
    sica = SICA(8, 8, (64, 64), stage=3, lmap_in=True).eval()
    x, smap, lmap = torch.randn(2, 8, 12, 16), torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8)
    with torch.no_grad():
        both = sica(x, smap, lmap)
        alone = [sica(x[i:i + 1], smap[i:i + 1], lmap[i:i + 1]) for i in range(2)]
    for j in range(2):
        torch.testing.assert_close(both[j], torch.cat([a[j] for a in alone]), rtol=1e-5, atol=1e-5)
