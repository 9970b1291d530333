"""Inception-v3 pool features for FID and KID: torch-fidelity's ``FeatureExtractorInceptionV3`` (through
torchmetrics' ``NoTrainInceptionV3``) with the FID weights read from a local file.

Preprocessing (torch-fidelity's, the original TensorFlow FID's): 8-bit RGB, resized to 299x299 with torch-fidelity's
TensorFlow-1-compatible bilinear interpolation (``antialias=False`` in torchmetrics), scaled as ``(x - 128) / 128``;
the feature is the 2048-d output of the final average pool. The file is read once, with ``torch.load(weights_only=True)``;
torch-fidelity (which unpickles with ``weights_only=False``) is handed those tensors re-serialised in memory, never the
file, so no code in the file can run (nor a file swapped after the check).
"""
from __future__ import annotations

import io
import logging

import torch

from ...errors import CheckpointError
from ...networks.checkpoint_io import describe_keys, load_state_dict
from .images import as_image_list, same_size_batches, to_uint8_nchw
from .model_files import check_model_path, require_packages

log = logging.getLogger("salient_background")

FEATURE_DIM = 2048
INPUT_SIZE = 299
# keys every FID-layout state dict has (first conv, last block, classifier): a quick test of the layout
_LAYOUT_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")


class InceptionFeatures:
    """Callable ``images -> [N, 2048]`` float32 features on the CPU (see :meth:`__call__`)."""

    def __init__(self, network: torch.nn.Module, device: torch.device, path: str):
        self.network = network
        self.device = device
        self.path = path

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 16) -> torch.Tensor:
        """Pool features of ``images`` (a [B,H,W,C] batch in 0..1 or a list of images of any sizes), one row per
        image, in order. Each row depends on its image only (cacheable per image)."""
        images = as_image_list(images)
        out = torch.empty(len(images), FEATURE_DIM, dtype=torch.float32)
        for start, batch in same_size_batches(images, batch_size):
            features = self.network(to_uint8_nchw(batch).to(self.device))
            out[start:start + len(batch)] = features.float().cpu()
        return out


def load_inception(path: str, device=None) -> InceptionFeatures:
    """The FID Inception from ``path`` (``pt_inception-2015-12-05-6726825d.pth`` or a file in the same layout).
    Raises ``MetricModelMissing`` when the file is absent, ``CheckpointError`` when it is not that network."""
    check_model_path("fid", path)
    require_packages("fid", "torchmetrics", "torch_fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    state = load_state_dict(path, what="FID Inception weights")  # weights_only=True: no code runs from the file
    missing = [k for k in _LAYOUT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path!r} is not Inception-v3 in the FID weights layout (no {', '.join(missing)}; "
                              f"its keys: {describe_keys(state)})")
    checked = io.BytesIO()
    torch.save(state, checked)  # plain tensors only: what torch-fidelity unpickles is ours, not the file
    del state
    checked.seek(0)
    try:
        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURE_DIM)],
                                     feature_extractor_weights_path=checked, antialias=False)
    except RuntimeError as exc:  # load_state_dict: wrong shapes or keys
        raise CheckpointError(f"{path!r} does not fit Inception-v3 in the FID weights layout: {exc}") from None
    device = torch.device(device) if device is not None else torch.device("cpu")
    return InceptionFeatures(network.to(device), device, path)
