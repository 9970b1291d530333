"""CLIP score, LPIPS diversity and object similarity (models/scoring/metrics) on tiny random models saved in their
real formats and loaded through the loaders a user runs; values checked against hand computations and the lpips
package itself."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from salient_background.models.errors import InputError
from salient_background.models.scoring import metrics
from sb_testkit.metric_models import (alexnet_features_state_dict, write_lpips_alexnet, write_tiny_clip,
                                      write_tiny_dinov2)


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, h, w, 3, generator=gen) * 255).round() / 255


# ---------------------------------------------------------------------------------------------- CLIP score
@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(str(tmp_path_factory.mktemp("clip")), seed=0)


def test_clip_score_is_100_times_the_clamped_cosine():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [3.0, 3.0]])
    scores = metrics.clip_score_from_embeddings(image, text)
    assert scores.tolist() == pytest.approx([100 * math.cos(math.pi / 4), 0.0, 100.0], rel=1e-6)
    with pytest.raises(InputError, match="one prompt per image"):
        metrics.clip_score_from_embeddings(image, text[:2])


def test_clip_score_equals_the_definition_computed_by_hand(clip_folder):
    from transformers import CLIPModel, CLIPProcessor

    scorer = metrics.load_clip(clip_folder)
    assert scorer.variant.startswith("clip-vit-large-patch14 (ViT patch 8, 32 px, 2 layers")
    images = _images(6, 40, 48, seed=1)
    prompts = ["a cat", "a dog", "a red mug on a table", "cat", "dog", "mug"]
    ours = scorer.scores(images, prompts)

    model = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPProcessor.from_pretrained(clip_folder)
    uint8 = [(im.numpy() * 255).round().astype("uint8") for im in images]
    with torch.no_grad():
        pixels = processor(images=uint8, return_tensors="pt")["pixel_values"]
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        image_out = model.get_image_features(pixel_values=pixels)
        text_out = model.get_text_features(**tokens)
    image_emb = getattr(image_out, "pooler_output", image_out)  # a tensor before transformers 5
    text_emb = getattr(text_out, "pooler_output", text_out)
    cos = (image_emb / image_emb.norm(dim=-1, keepdim=True) * (text_emb / text_emb.norm(dim=-1, keepdim=True))).sum(-1)
    expected = 100 * cos.clamp(min=0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (expected > 0).any() and (cos < 0).any()  # both branches of max(cos, 0) are exercised


def test_missing_clip_folder_names_the_download_command(tmp_path, clip_folder):
    with pytest.raises(metrics.MetricModelMissing, match="download metrics-clip"):
        metrics.load_clip(str(tmp_path / "nothing"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(metrics.MetricModelMissing, match="missing: model.safetensors"):
        metrics.load_clip(str(partial))


# ---------------------------------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def lpips_model(tmp_path_factory):
    return metrics.load_lpips(write_lpips_alexnet(str(tmp_path_factory.mktemp("lpips")), seed=0))


@pytest.fixture(scope="module")
def package_lpips():
    """The lpips package's own LPIPS, its pretrained backbone being torchvision's AlexNet with the same weights
    (lpips asks torchvision for it; here torchvision's constructor hands over the loaded network)."""
    import lpips
    from lpips import pretrained_networks
    from torchvision.models import alexnet

    network = alexnet(weights=None)
    network.load_state_dict(alexnet_features_state_dict(seed=0), strict=False)
    original = pretrained_networks.tv.alexnet
    pretrained_networks.tv.alexnet = lambda *a, **k: network
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="alex", verbose=False).eval()
    finally:
        pretrained_networks.tv.alexnet = original
    return model


def test_our_lpips_equals_the_lpips_package(lpips_model, package_lpips):
    a, b = _images(3, 64, 64, seed=2), _images(3, 64, 64, seed=3)
    ours = metrics.lpips_pairs(lpips_model, a, b)
    with torch.no_grad():
        theirs = package_lpips(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), normalize=True).flatten()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (ours > 0).all()


def test_background_lpips_ignores_the_object_and_averages_over_the_background(lpips_model, package_lpips):
    base = _images(1, 64, 64, seed=4)
    mask = torch.zeros(64, 64)
    mask[16:40, 20:44] = 1.0
    changed_object = base.clone()
    changed_object[0, 16:40, 20:44] = _images(1, 24, 24, seed=5)[0]
    assert float(metrics.lpips_pairs(lpips_model, base, changed_object, mask)) == 0.0
    assert float(metrics.lpips_pairs(lpips_model, base, changed_object)) > 0

    other = _images(1, 64, 64, seed=6)
    ours = float(metrics.lpips_pairs(lpips_model, base, other, mask))
    grey_a, grey_b = base.clone(), other.clone()
    grey_a[0, 16:40, 20:44] = 0.5
    grey_b[0, 16:40, 20:44] = 0.5
    package_lpips.spatial = True
    try:
        with torch.no_grad():
            distance = package_lpips(grey_a.permute(0, 3, 1, 2), grey_b.permute(0, 3, 1, 2), normalize=True)[0, 0]
    finally:
        package_lpips.spatial = False
    expected = float(distance[mask < 0.5].mean())
    assert ours == pytest.approx(expected, rel=1e-5)


def test_lpips_diversity_is_the_mean_over_every_pair(lpips_model):
    images = _images(4, 48, 48, seed=7)
    mask = torch.zeros(48, 48)
    mask[10:30, 10:30] = 1.0
    result = metrics.lpips_diversity(lpips_model, images, mask, batch_size=4)  # 6 pairs in two chunks
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    whole = [float(metrics.lpips_pairs(lpips_model, images[i:i + 1], images[j:j + 1])) for i, j in pairs]
    background = [float(metrics.lpips_pairs(lpips_model, images[i:i + 1], images[j:j + 1], mask)) for i, j in pairs]
    assert result.pairs == 6
    assert result.whole == pytest.approx(sum(whole) / 6, rel=1e-6)
    assert result.background == pytest.approx(sum(background) / 6, rel=1e-6)
    one = metrics.lpips_diversity(lpips_model, images[:1], mask)
    assert one.pairs == 0 and math.isnan(one.whole) and math.isnan(one.background)
    assert math.isnan(metrics.lpips_diversity(lpips_model, images[:2]).background)
    everything = torch.ones(48, 48)
    assert math.isnan(float(metrics.lpips_pairs(lpips_model, images[:1], images[1:2], everything)))


def test_lpips_backbone_in_the_wrong_layout_is_refused(tmp_path):
    from salient_background.models.errors import CheckpointError

    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(CheckpointError, match="not a torchvision AlexNet"):
        metrics.load_lpips(str(tmp_path / "alexnet-owt-7be5be79.pth"))


# ---------------------------------------------------------------------------------------------- object similarity
@pytest.fixture(scope="module")
def object_encoder(tmp_path_factory):
    return metrics.load_object_encoder(write_tiny_dinov2(str(tmp_path_factory.mktemp("dino")), seed=0))


def test_object_crop_is_the_mask_box_on_grey_padded_to_a_square():
    image = _images(1, 40, 50, seed=8)
    mask = torch.zeros(40, 50)
    mask[5:15, 10:30] = 1.0  # box 10 high, 20 wide
    mask[5, 10] = 0.0  # a background pixel inside the box
    (crop,) = metrics.object_crops(image, mask)
    assert crop.shape == (20, 20, 3)
    torch.testing.assert_close(crop[5:15, :][1:, 1:], image[0, 6:15, 11:30])  # rows 5..14 of the square
    assert (crop[5, 0] == 0.5).all()  # the unmasked box pixel is grey
    assert (crop[:5] == 0.5).all() and (crop[15:] == 0.5).all()  # padding above and below
    with pytest.raises(InputError, match="empty"):
        metrics.object_crops(image, torch.zeros(40, 50))


def test_object_similarity_is_one_for_the_same_object_whatever_the_background(object_encoder):
    photo = _images(1, 48, 48, seed=9)
    mask = torch.zeros(48, 48)
    mask[12:36, 8:40] = 1.0
    new_background = _images(1, 48, 48, seed=10)
    new_background[0, 12:36, 8:40] = photo[0, 12:36, 8:40]
    other_object = photo.clone()
    other_object[0, 12:36, 8:40] = _images(1, 24, 32, seed=11)[0]
    embeddings = object_encoder.embeddings(torch.cat([photo, new_background, other_object]), mask)
    same = metrics.object_similarity_from_embeddings(embeddings[:1], embeddings[1:2])
    different = metrics.object_similarity_from_embeddings(embeddings[:1], embeddings[2:3])
    assert float(same) == pytest.approx(1.0, abs=1e-6)
    assert float(different) < 1.0 - 1e-4
    assert object_encoder.variant.startswith("dinov2-base (ViT patch 14, 2 layers, embedding 32)")


def test_object_embedding_is_dinov2_on_the_crop(object_encoder):
    photo = _images(1, 30, 30, seed=12)
    mask = torch.zeros(30, 30)
    mask[3:20, 5:25] = 1.0
    (crop,) = metrics.object_crops(photo, mask)
    resized = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], size=(28, 28), mode="bicubic",
                                              align_corners=False, antialias=True)
    ours = object_encoder.embeddings(photo, mask)
    # the processor's own steps: 8-bit values, bicubic resize to the crop size, ImageNet normalisation
    pixels = object_encoder.processor(images=[(crop.numpy() * 255 + 0.5).astype("uint8")], return_tensors="pt",
                                      do_center_crop=False, size={"height": 28, "width": 28})["pixel_values"]
    with torch.no_grad():
        expected = object_encoder.model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    # the network saw the whole crop, resized (PIL's bicubic vs torch's: close, not equal); a centre crop would not
    assert (pixels[0] - (resized[0] - mean) / std).abs().mean() < 0.03
