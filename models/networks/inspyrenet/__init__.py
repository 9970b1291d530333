"""InSPyReNet with the Swin-B backbone, laid out so the official ``transparent-background`` checkpoints
(``ckpt_base.pth`` at base size 1024, ``ckpt_fast.pth`` at 384) load with strict key matching.

Facts about the official files (both share one key set): a flat state dict of 1,625 tensors, about 91 M
elements. The pyramid's Gaussian kernel is derived, not stored.
"""
from .network import BACKBONE_CHANNELS, InSPyReNet

OFFICIAL_KEY_COUNT = 1625

__all__ = ["InSPyReNet", "BACKBONE_CHANNELS", "OFFICIAL_KEY_COUNT", "build_inspyrenet"]


def build_inspyrenet(base_size: int = 1024) -> InSPyReNet:
    """An eval-mode network with default (untrained) weights."""
    return InSPyReNet(base_size=base_size).eval()
