"""Random models in the image-quality metrics' real file formats (models/scoring/metrics/), loaded by the tests
through the loaders a user runs.

* the FID Inception: a full-size state dict in the FID weights layout (``pt_inception-2015-12-05-*.pth``: the
  parameter names of pytorch-fid's / torch-fidelity's Inception-v3, which are torchvision's), every tensor random;
* the LPIPS backbone: torchvision AlexNet's ``features.*`` tensors (the part lpips reads; the classifier of the real
  file, 230 MB of it, is left out), random;
* a tiny CLIP and a tiny DINOv2 saved with ``save_pretrained`` beside their tokenizer / image-processor files.
"""
from __future__ import annotations

import os

import torch

from .diffusers_models import randomize_all_tensors, toy_bpe_vocabulary, write_toy_tokenizer

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
CLIP_DIR = "clip-vit-large-patch14"
DINO_DIR = "dinov2-base"


def _random_batchnorm_and_convs(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random, scaled so that a deep conv + batch-norm stack keeps finite, image-dependent outputs:
    kernels N(0, 2/fan_in), norm scales 1 + N(0, 0.1), shifts and running means N(0, 0.1), running variances
    U(0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.ndim >= 2:
                value = noise * (2.0 / tensor[0].numel()) ** 0.5
            elif name.endswith("running_var"):
                value = 0.5 + torch.rand(tensor.shape, generator=gen)
            elif name.endswith("bn.weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            tensor.copy_(value)
    return module


def fid_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Inception-v3 state dict in the FID weights layout (1008 classes, no auxiliary head)."""
    from torchvision.models import inception_v3

    network = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    return _random_batchnorm_and_convs(network, seed).state_dict()


def write_fid_inception(folder: str, seed: int = 0) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, INCEPTION_FILE)
    torch.save(fid_inception_state_dict(seed), path)
    return path


def alexnet_features_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from torchvision.models import alexnet

    features = _random_batchnorm_and_convs(alexnet(weights=None).features, seed)
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def write_lpips_alexnet(folder: str, seed: int = 0) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ALEXNET_FILE)
    torch.save(alexnet_features_state_dict(seed), path)
    return path


def write_tiny_clip(folder: str, seed: int = 0, image_size: int = 32) -> str:
    """A tiny random CLIP folder: config + model.safetensors, the toy CLIP tokenizer, a CLIP image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab, _ = toy_bpe_vocabulary()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    randomize_all_tensors(model, seed)
    folder = os.path.join(folder, CLIP_DIR)
    model.save_pretrained(folder)
    write_toy_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def write_tiny_dinov2(folder: str, seed: int = 0, image_size: int = 28) -> str:
    """A tiny random DINOv2 folder: config + model.safetensors and DINOv2's image processor (BitImageProcessor)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          image_size=image_size, patch_size=14)
    torch.manual_seed(seed)
    model = randomize_all_tensors(Dinov2Model(config), seed)
    folder = os.path.join(folder, DINO_DIR)
    model.save_pretrained(folder)
    # DINOv2's processor: short side to 256/224 of the crop size, then a centre crop (as facebook/dinov2-base's)
    BitImageProcessor(size={"shortest_edge": round(image_size * 256 / 224)},
                      crop_size={"height": image_size, "width": image_size},
                      do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def write_metric_models(models_dir: str, seed: int = 0) -> dict[str, str]:
    """All four under ``models_dir/metrics`` (the ComfyUI layout ``find_metric_model`` searches);
    ``{metric: path}``."""
    folder = os.path.join(models_dir, "metrics")
    return {
        "fid": write_fid_inception(folder, seed),
        "lpips": write_lpips_alexnet(folder, seed),
        "clip": write_tiny_clip(folder, seed),
        "object_similarity": write_tiny_dinov2(folder, seed),
    }
