"""LPIPS diversity: how different the images generated for one input with different seeds are.

LPIPS is the ``lpips`` package's (version 0.1, AlexNet backbone, its linear heads shipped inside the package); the
AlexNet backbone is read from a local torchvision state dict (``alexnet-owt-7be5be79.pth``) instead of torchvision's
download. Images are given in 0..1 and scaled to -1..1 as the package expects.

* ``whole``: the mean of LPIPS over every pair of the K images (K (K-1) / 2 pairs).
* ``background``: the same pairs with the object taken out: in both images the object's pixels (input object
  mask ``>= 0.5``) are set to the same mid grey, so no object content reaches the network's receptive fields, and
  LPIPS's per-pixel distance map (``spatial=True``: each layer's weighted distance upsampled to the image size and
  summed) is averaged over the background pixels only, so the score is not diluted by the object's area.
  NaN when the mask leaves no background.
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass

import torch

from ...errors import CheckpointError, InputError
from ...imaging.image_ops import as_mask_batch, as_rgb_images
from ...networks.checkpoint_io import load_state_dict
from .model_files import check_model_path, require_packages

GREY = 0.5


@dataclass
class LpipsModel:
    whole: torch.nn.Module  # lpips.LPIPS, one value per pair
    spatial: torch.nn.Module  # the same weights, per-pixel distance map
    device: torch.device


@dataclass
class LpipsDiversity:
    whole: float  # mean pairwise LPIPS on the whole image
    background: float  # mean pairwise LPIPS on the background (see the module docstring)
    pairs: int


def load_lpips(backbone_path: str, device=None) -> LpipsModel:
    """LPIPS (AlexNet) with the backbone from ``backbone_path``, a torchvision AlexNet state dict."""
    check_model_path("lpips", backbone_path)
    require_packages("lpips", "lpips")
    import lpips

    state = load_state_dict(backbone_path, what="AlexNet backbone for LPIPS")
    with warnings.catch_warnings():  # lpips builds torchvision's AlexNet with the deprecated pretrained=False
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(_backbone_state(model.net, state, backbone_path))
    model = model.eval().requires_grad_(False)
    spatial = copy.copy(model)  # shares every module and weight; only the flag differs
    spatial.spatial = True
    device = torch.device(device) if device is not None else torch.device("cpu")
    return LpipsModel(model.to(device), spatial, device)


def _backbone_state(net: torch.nn.Module, state: dict, path: str) -> dict:
    """torchvision's ``features.<i>.*`` keys -> lpips' ``slice<k>.<i>.*`` (lpips slices torchvision's layers
    keeping their indices)."""
    wanted = net.state_dict()
    mapped, problems = {}, []
    for name, tensor in wanted.items():
        _, index, param = name.split(".")
        source = state.get(f"features.{index}.{param}")
        if source is None or source.shape != tensor.shape:
            problems.append(f"features.{index}.{param}" + ("" if source is None else f" {tuple(source.shape)}"))
        else:
            mapped[name] = source
    if problems:
        raise CheckpointError(f"{path!r} is not a torchvision AlexNet state dict: missing or mis-shaped "
                              f"{', '.join(problems)}")
    return mapped


def _to_lpips_range(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2) * 2.0 - 1.0


@torch.no_grad()
def lpips_pairs(model: LpipsModel, images_a, images_b, object_masks=None) -> torch.Tensor:
    """LPIPS of each pair (images [B,H,W,3] in 0..1 of one size). With ``object_masks`` ([B,H,W] or one [H,W],
    1 = object) the background distance of the module docstring; else the whole-image distance. Returns [B]."""
    a, b = as_rgb_images(images_a, what="images_a"), as_rgb_images(images_b, what="images_b")
    if a.shape != b.shape:
        raise InputError(f"LPIPS compares images of one size: {tuple(a.shape)} vs {tuple(b.shape)}")
    if object_masks is None:
        return model.whole(_to_lpips_range(a).to(model.device), _to_lpips_range(b).to(model.device)).flatten().cpu()
    masks = as_mask_batch(object_masks, what="object_mask")
    if masks.shape[1:] != a.shape[1:3]:
        raise InputError(f"object mask {masks.shape[2]}x{masks.shape[1]} vs images {a.shape[2]}x{a.shape[1]}")
    obj = (masks >= 0.5).expand(a.shape[0], -1, -1)[..., None]
    a, b = torch.where(obj, GREY, a), torch.where(obj, GREY, b)
    distance = model.spatial(_to_lpips_range(a).to(model.device), _to_lpips_range(b).to(model.device))[:, 0].cpu()
    background = (~obj[..., 0]).to(distance.dtype)
    area = background.sum(dim=(1, 2))
    return torch.where(area > 0, (distance * background).sum(dim=(1, 2)) / area.clamp(min=1), math.nan)


def lpips_diversity(model: LpipsModel, images, object_mask=None, batch_size: int = 8) -> LpipsDiversity:
    """Mean pairwise LPIPS of K images generated for one input ([K,H,W,3]); ``object_mask`` [H,W] (1 = object)
    adds the background-only value (else it is NaN). Fewer than two images: NaN, 0 pairs."""
    images = as_rgb_images(images, what="images")
    pairs = list(itertools.combinations(range(images.shape[0]), 2))
    if not pairs:
        return LpipsDiversity(math.nan, math.nan, 0)
    whole, background = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        a, b = images[[i for i, _ in chunk]], images[[j for _, j in chunk]]
        whole.append(lpips_pairs(model, a, b))
        if object_mask is not None:
            background.append(lpips_pairs(model, a, b, object_mask))
    mean_background = torch.cat(background).double().mean().item() if background else math.nan
    return LpipsDiversity(torch.cat(whole).double().mean().item(), mean_background, len(pairs))
