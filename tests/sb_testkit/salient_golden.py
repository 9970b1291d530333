"""Golden salient maps: the reference (transparent-background 1.2.12) against ours on identical random weights.

``tests/golden/salient_parity.npz`` records, per mode, the seed recipe, the input image recipe and the
reference's float map (area-downsampled by ``DOWNSAMPLE`` plus a few full-resolution crops).
``tests/golden/make_salient_golden.py`` rewrites it in an environment where ``transparent_background`` is
importable (this module never installs it); ``tests/test_salient_parity.py`` checks our model against it.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .inspyrenet import RECIPE_VERSION, cached_random_state_dict, save_pth, synthetic_photo

GOLDEN_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "salient_parity.npz")
WEIGHT_SEED = 1234
IMAGE_SEED = 7
IMAGE_WIDTH, IMAGE_HEIGHT = 650, 470  # non-square, not a multiple of 32: dynamic resize -> 640x480
DOWNSAMPLE = 5  # 650x470 -> 130x94
CROPS = ((200, 290, 48), (0, 0, 48), (422, 602, 48))  # (top, left, size): object edge, corner, far corner
THREADS = 1  # parity is defined at equal thread counts; one thread is also the most reproducible
PARITY_TOLERANCE = 1e-3
MODES = ("base", "fast")
BASE_SIZES = {"base": 1024, "fast": 384}


def golden_image() -> np.ndarray:
    return synthetic_photo(IMAGE_WIDTH, IMAGE_HEIGHT, seed=IMAGE_SEED)


def golden_state_dict(mode: str) -> dict[str, torch.Tensor]:
    return cached_random_state_dict(WEIGHT_SEED, BASE_SIZES[mode])


def summarise(full_map: np.ndarray) -> dict[str, np.ndarray]:
    """Downsampled map and full-resolution crops of a [H,W] float map."""
    t = torch.from_numpy(np.ascontiguousarray(full_map, dtype=np.float32))[None, None]
    down = F.avg_pool2d(t, DOWNSAMPLE)[0, 0].numpy()
    crops = np.stack([full_map[top:top + s, left:left + s] for top, left, s in CROPS]).astype(np.float32)
    return {"down": down.astype(np.float32), "crops": crops}


def our_map(state: dict, mode: str, image: np.ndarray) -> tuple[np.ndarray, float]:
    from salient_background.models.networks.salient import SalientSegmenter
    from salient_background.models.networks.inspyrenet import InSPyReNet

    net = InSPyReNet(base_size=BASE_SIZES[mode])
    net.load_state_dict(state, strict=True)
    model = SalientSegmenter(net.eval(), mode=mode)
    images = torch.from_numpy(image).float().div(255.0)[None]
    pred = model.predict(images, resize="auto", threshold_empty=0.0)
    return pred.maps[0].numpy(), float(pred.raw_max[0])


def reference_map(checkpoint_path: str, mode: str, image: np.ndarray) -> tuple[np.ndarray, float]:
    """The reference's float map, as ``Remover.process`` computes it before quantising: its network and its
    1.2.12 transforms (dynamic resize in base mode, static 384 in fast mode)."""
    import torchvision.transforms as transforms
    from PIL import Image
    from transparent_background.InSPyReNet import InSPyReNet_SwinB
    from transparent_background.utils import dynamic_resize, normalize, static_resize, tonumpy, totensor

    base = BASE_SIZES[mode]
    model = InSPyReNet_SwinB(depth=64, pretrained=False, base_size=[base, base], threshold=None)
    model.eval()
    model.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True), strict=True)
    transform = transforms.Compose([
        static_resize(size=[384, 384]) if mode == "fast" else dynamic_resize(L=1280),
        tonumpy(),
        normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        totensor(),
    ])
    img = Image.fromarray(image)
    x = transform(img)[None]
    with torch.no_grad():
        pred = model(x)
        raw_max = float(torch.sigmoid(model.forward_inspyre(x)["saliency"][-1]).max())
    pred = F.interpolate(pred, img.size[::-1], mode="bilinear", align_corners=True)
    return pred[0, 0].numpy(), raw_max


def reference_version() -> str:
    from importlib.metadata import version

    return version("transparent-background")


def make_golden(workdir: str, modes=MODES) -> dict[str, np.ndarray]:
    """Run reference and ours; return the arrays to store (and the measured differences)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        image = golden_image()
        out: dict[str, np.ndarray] = {
            "recipe_version": np.array(RECIPE_VERSION), "weight_seed": np.array(WEIGHT_SEED),
            "image_seed": np.array(IMAGE_SEED), "image_size": np.array([IMAGE_WIDTH, IMAGE_HEIGHT]),
            "downsample": np.array(DOWNSAMPLE), "crops_at": np.array(CROPS), "threads": np.array(THREADS),
            "reference": np.array(f"transparent-background {reference_version()}, torch {torch.__version__}"),
        }
        for mode in modes:
            state = golden_state_dict(mode)
            path = save_pth(state, os.path.join(workdir, f"golden_{mode}.pth"))
            ref, ref_raw_max = reference_map(path, mode, image)
            ours, our_raw_max = our_map(state, mode, image)
            summary = summarise(ref)
            out[f"{mode}_down"] = summary["down"]
            out[f"{mode}_crops"] = summary["crops"]
            out[f"{mode}_raw_max"] = np.array(ref_raw_max, dtype=np.float32)
            out[f"{mode}_max_abs_diff_ours"] = np.array(np.abs(ref - ours).max(), dtype=np.float32)
            out[f"{mode}_raw_max_ours"] = np.array(our_raw_max, dtype=np.float32)
            out[f"{mode}_map_std"] = np.array(ref.std(), dtype=np.float32)
        return out
    finally:
        torch.set_num_threads(previous)
