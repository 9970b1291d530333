"""InSPyReNet (Swin-B): inverse saliency pyramid reconstruction.

Kim et al., "Revisiting Image Pyramid Structure for High Resolution Salient Object Detection" (ACCV 2022),
in the configuration the ``transparent-background`` package ships (MIT licence): Swin-B backbone, depth 64,
no high-resolution pyramid blending at inference. Written from the paper and the package's behaviour; the
module tree matches the official checkpoints key for key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ImagePyramid
from .modules import SICA, ContextModule, Decoder
from .swin import swin_b

BACKBONE_CHANNELS = (128, 128, 256, 512, 1024)


class InSPyReNet(nn.Module):
    """Input: ImageNet-normalised RGB [B,3,H,W] with H, W multiples of 32. Output: logits [B,1,H,W].

    ``base_size`` (e.g. 1024 for ``ckpt_base.pth``, 384 for ``ckpt_fast.pth``) fixes the SICA pooling grids;
    it must match the checkpoint's training size.
    """

    def __init__(self, base_size: int | tuple[int, int] = 1024, depth: int = 64):
        super().__init__()
        base = (base_size, base_size) if isinstance(base_size, int) else tuple(base_size)
        self.base_size = base
        self.depth = depth
        self.backbone = swin_b()
        for i, cin in enumerate(BACKBONE_CHANNELS, start=1):
            self.add_module(f"context{i}", ContextModule(cin, depth))
        self.decoder = Decoder(depth * 3, depth)
        self.attention0 = SICA(depth, depth, base, stage=0, lmap_in=True)
        self.attention1 = SICA(depth * 2, depth, base, stage=1, lmap_in=True)
        self.attention2 = SICA(depth * 2, depth, base, stage=2)
        self.image_pyramid = ImagePyramid(7, 1.0)

    @staticmethod
    def _resize(x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Saliency logits at the input resolution (the finest pyramid level, d0)."""
        h, w = x.shape[-2:]
        x1, x2, x3, x4, x5 = self.backbone(x)
        x1 = self.context1(x1)
        x2 = self.context2(x2)
        x3 = self.context3(x3)
        x4 = self.context4(x4)
        x5 = self.context5(x5)

        f3, d3 = self.decoder([x3, x4, x5])

        f3 = self._resize(f3, (h // 4, w // 4))
        f2, p2 = self.attention2(torch.cat([x2, f3], dim=1), d3)
        d2 = self.image_pyramid.reconstruct(d3, p2)

        x1 = self._resize(x1, (h // 2, w // 2))
        f2 = self._resize(f2, (h // 2, w // 2))
        f1, p1 = self.attention1(torch.cat([x1, f2], dim=1), d2, p2)
        d1 = self.image_pyramid.reconstruct(d2, p1)

        f1 = self._resize(f1, (h, w))
        _, p0 = self.attention0(f1, d1, p1)
        return self.image_pyramid.reconstruct(d1, p0)
