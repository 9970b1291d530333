"""InSPyReNet heads: pyramidal axial-attention context (PAA_e) and decoder (PAA_d), and the scale-invariant
context attention (SICA) that predicts each Laplacian level.

``base_size`` sets SICA's pooling grid (base_size / 2**stage), which is why the fast (384) and base (1024)
checkpoints need the network built with their own base size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import to_channels_last
from .layers import AxialSelfAttention, ConvBN


class AxialKernel(nn.Module):
    """One receptive-field branch of the context module (reference name: PAA_kernel)."""

    def __init__(self, cin: int, cout: int, receptive: int):
        super().__init__()
        self.conv0 = ConvBN(cin, cout, 1)
        self.conv1 = ConvBN(cout, cout, (1, receptive))
        self.conv2 = ConvBN(cout, cout, (receptive, 1))
        self.conv3 = ConvBN(cout, cout, 3, dilation=receptive)
        self.Hattn = AxialSelfAttention(cout, "h")
        self.Wattn = AxialSelfAttention(cout, "w")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.conv0(x)))
        return self.conv3(self.Hattn(x) + self.Wattn(x))


class ContextModule(nn.Module):
    """Multi-branch context module applied to one backbone level (reference name: PAA_e)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.branch0 = ConvBN(cin, cout, 1)
        self.branch1 = AxialKernel(cin, cout, 3)
        self.branch2 = AxialKernel(cin, cout, 5)
        self.branch3 = AxialKernel(cin, cout, 7)
        self.conv_cat = ConvBN(4 * cout, cout, 3)
        self.conv_res = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cat = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)
        return F.relu(self.conv_cat(cat) + self.conv_res(x))


class Decoder(nn.Module):
    """Fuses the three deepest context maps into the coarsest saliency map (reference name: PAA_d)."""

    def __init__(self, cin: int, depth: int = 64):
        super().__init__()
        self.conv1 = ConvBN(cin, depth, 3)
        self.conv2 = ConvBN(depth, depth, 3)
        self.conv3 = ConvBN(depth, depth, 3)
        self.conv4 = ConvBN(depth, depth, 3)
        self.conv5 = ConvBN(depth, 1, 3, bn=False)
        self.Hattn = AxialSelfAttention(depth, "h")
        self.Wattn = AxialSelfAttention(depth, "w")

    def forward(self, features):
        first = features[0]
        ups = [F.interpolate(f, size=first.shape[-2:], mode="bilinear", align_corners=True) for f in features[1:]]
        x = self.conv1(torch.cat([*ups[::-1], first], dim=1))
        x = self.conv2(self.Hattn(x) + self.Wattn(x))
        x = self.conv4(self.conv3(x))
        return x, self.conv5(x)


class SICA(nn.Module):
    """Scale-invariant context attention: refines features with context vectors pooled under the
    foreground / background / uncertain regions of the coarser prediction (and, with ``lmap_in``, of the
    previous Laplacian level), and predicts this level's Laplacian."""

    def __init__(self, cin: int, depth: int, base_size: tuple[int, int], stage: int, lmap_in: bool = False):
        super().__init__()
        self.depth = depth
        self.lmap_in = lmap_in
        self.stage_size = (base_size[0] // 2**stage, base_size[1] // 2**stage)
        self.ctx = 5 if lmap_in else 3
        self.conv_query = nn.Sequential(ConvBN(cin, depth, 3, relu=True), ConvBN(depth, depth, 3, relu=True))
        self.conv_key = nn.Sequential(ConvBN(cin, depth, 1, relu=True), ConvBN(depth, depth, 1, relu=True))
        self.conv_value = nn.Sequential(ConvBN(cin, depth, 1, relu=True), ConvBN(depth, depth, 1, relu=True))
        self.conv_out1 = ConvBN(depth, depth, 3, relu=True)
        self.conv_out2 = ConvBN(cin + depth, depth, 3, relu=True)
        self.conv_out3 = ConvBN(depth, depth, 3, relu=True)
        self.conv_out4 = ConvBN(depth, 1, 1)
        self.threshold = nn.Parameter(torch.tensor([0.5]))
        if lmap_in:
            self.lthreshold = nn.Parameter(torch.tensor([0.5]))

    def forward(self, x: torch.Tensor, smap: torch.Tensor, lmap: torch.Tensor | None = None):
        if self.lmap_in != (lmap is not None):
            raise ValueError("SICA: lmap must be given exactly when the module was built with lmap_in=True")
        b, c, h, w = x.shape
        smap = torch.sigmoid(F.interpolate(smap, size=(h, w), mode="bilinear", align_corners=False))
        p = smap - self.threshold
        prob = [p.clamp(0, 1), (-p).clamp(0, 1), self.threshold - p.abs()]
        if lmap is not None:
            lmap = torch.sigmoid(F.interpolate(lmap, size=(h, w), mode="bilinear", align_corners=False))
            lp = lmap - self.lthreshold
            prob += [lp.clamp(0, 1), (-lp).clamp(0, 1)]
        prob = torch.cat(prob, dim=1)

        sh, sw = self.stage_size
        n = sh * sw
        # As in the reference: the [B,C,h,w] map is reinterpreted (not permuted) as [B, n, C].
        f = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False).reshape(b, n, -1)
        prob = F.interpolate(prob, size=(sh, sw), mode="bilinear", align_corners=False).reshape(b, self.ctx, n)
        context = torch.bmm(prob, f).permute(0, 2, 1).unsqueeze(3)

        query = self.conv_query(x).flatten(2).transpose(1, 2)  # [B, h*w, depth]
        key = self.conv_key(context).flatten(2)  # [B, depth, ctx]
        value = self.conv_value(context).flatten(2)  # [B, depth, ctx]
        sim = (torch.bmm(query, key) * self.depth**-0.5).softmax(dim=-1)  # [B, h*w, ctx]
        context = self._attend_and_convolve(sim, value, h, w)
        x = self.conv_out3(self.conv_out2(torch.cat([x, context], dim=1)))
        return x, self.conv_out4(x)

    def _attend_and_convolve(self, sim: torch.Tensor, value: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``conv_out1`` of the attended context ``sim @ value^T`` (a [B, depth, h, w] map).

        In eval mode without building that map: a convolution is linear, so convolving the ``ctx``
        similarity maps with kernels pre-multiplied by ``value`` gives the same result (``ctx`` is 3 or 5
        input channels instead of ``depth``; the zero padding agrees because both maps are zero there).
        """
        b = sim.shape[0]
        if self.training:
            context = torch.bmm(sim, value.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            return self.conv_out1(context)
        weight, bias = self.conv_out1.folded_weights()
        conv = self.conv_out1.conv
        maps = to_channels_last(sim.reshape(b, h, w, self.ctx).permute(0, 3, 1, 2))
        out = [
            F.conv2d(maps[i:i + 1], torch.einsum("odyx,dk->okyx", weight, value[i]), bias, 1, conv.padding, conv.dilation)
            for i in range(b)
        ]
        return F.relu_(out[0] if b == 1 else torch.cat(out))
