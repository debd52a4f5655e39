"""Offline tests of the torchvision backbone provider: small images, random weights, batch 2."""

from __future__ import annotations

import gc
import socket
import urllib.error

import pytest
import tlcore_torchvision
import torch
import torchvision
from tlcore_torchvision import backbones
from torch import nn

from tlcore import BackboneOptions
from tlcore.errors import ConfigError, UnknownNameError, WeightsError
from tlcore.plugins import catalog, reset_host
from tlcore.weights import load_into_backbone, read_weights_file

# torchvision's GoogLeNet/Inception builders warn about a future init change whenever built without weights.
pytestmark = pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")

# name -> square size to test at (the smallest that keeps the model's stages non-empty, or its fixed size).
REPRESENTATIVE = {
    "resnet18": 32,
    "vgg11": 32,
    "alexnet": 64,
    "squeezenet1_0": 32,
    "densenet121": 32,
    "efficientnet_b0": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "mnasnet0_5": 32,
    "shufflenet_v2_x0_5": 32,
    "regnet_y_400mf": 32,
    "convnext_tiny": 32,
    "googlenet": 32,
    "inception_v3": 75,
    "swin_t": 32,
    "vit_b_16": 32,  # ViT is built for the size asked: 2 x 2 patches
    "maxvit_t": 224,  # MaxViT accepts only sizes near multiples of 224
}
# How the same full torchvision model is built for the state-dict round trip.
FULL_MODEL_KWARGS = {"vit_b_16": {"image_size": 32}}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and a download that fails at once as it does offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    seen = {}

    def offline_download(url, dst, hash_prefix=None, progress=True):
        seen["timeout"] = socket.getdefaulttimeout()
        seen["url"] = url
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    return seen


def _build(name: str, size: int | None = None, pretrained: bool = False):
    return backbones.factory(f"torchvision:{name}", BackboneOptions(pretrained=pretrained, image_size=size))


def _full_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A state dict in the full torchvision model's layout and shapes, with fresh random values.

    The layout comes from a meta-device build (no memory); RegNet cannot build on meta and is built for real.
    """
    kwargs = FULL_MODEL_KWARGS.get(name, {})
    try:
        with torch.device("meta"):
            template = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    except NotImplementedError:
        template = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    return {
        key: torch.randn(value.shape) if value.is_floating_point() else torch.randint(0, 9, value.shape)
        for key, value in template.items()
    }


def _check_forward(backbone, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    backbone.module.train()
    out = backbone.module(x)
    assert isinstance(out, torch.Tensor)  # no auxiliary logits in training mode
    assert out.shape == (2, backbone.feature_dim)
    backbone.module.eval()
    with torch.no_grad():
        assert backbone.module(x).shape == (2, backbone.feature_dim)


@pytest.mark.parametrize("name", list(REPRESENTATIVE))
def test_builds_features_groups_and_loads_full_state_dict(name, tmp_path):
    size = REPRESENTATIVE[name]
    backbone = _build(name, size)
    backbone.validate()
    assert backbone.name == f"torchvision:{name}"
    assert backbone.weights == "none"
    assert backbone.preprocessing.min_size <= size
    _check_forward(backbone, size)

    # Every parameter in exactly one group (validate() checks), groups in input-to-output order.
    names = [g.name for g in backbone.layer_groups]
    assert len(names) >= 4 or len(list(backbone.module.named_children())) < 4
    order = [n for n, _ in backbone.module.named_parameters()]
    firsts = [min(i for i, p in enumerate(order) if g.owns(p)) for g in backbone.layer_groups]
    assert firsts == sorted(firsts)

    # A full torchvision state dict (classifier and aux heads included) loads with identical tensors.
    full_state = _full_state_dict(name)
    own_keys = set(backbone.module.state_dict())
    assert own_keys <= set(full_state)
    classifier = backbone.extra["classifier"]
    for key in set(full_state) - own_keys:
        assert key.startswith(classifier + ".") or key.lower().startswith("aux"), key
    if sum(v.numel() for v in full_state.values()) < 50_000_000:  # VGG/AlexNet: skip 0.5 GB of file I/O
        path = tmp_path / f"{name}.pth"
        torch.save(full_state, path)
        full_state = read_weights_file(path).tensors
    summary = load_into_backbone(backbone, full_state, name)  # mnasnet: needs the state dict's version metadata
    assert "loaded" in summary
    for key, value in backbone.module.state_dict().items():
        assert torch.equal(value, full_state[key]), key


def test_resnet18_groups_and_preprocessing():
    backbone = _build("resnet18", 32)
    groups = {g.name: g.prefixes for g in backbone.layer_groups}
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert groups["stem"] == ("conv1", "bn1")
    assert backbone.feature_dim == 512
    assert backbone.extra == {"family": "resnet", "architecture": "ResNet", "classifier": "fc"}
    pre = backbone.preprocessing
    assert pre.input_size == 224 and pre.crop_pct == pytest.approx(224 / 256)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.interpolation == "bilinear"


def test_preprocessing_follows_the_default_weights():
    effnet = _build("efficientnet_b0", 32).preprocessing
    assert effnet.interpolation == "bicubic"
    inception = _build("inception_v3", 75).preprocessing
    assert (inception.input_size, inception.min_size) == (299, 75)
    assert _build("alexnet", 64).preprocessing.min_size == 63
    assert _build("swin_t", 32).preprocessing.min_size <= 32  # torchvision's meta says 224; Swin pads any size


def test_vit_groups_hold_root_and_encoder_tensors():
    backbone = _build("vit_b_16", 32)
    groups = backbone.layer_groups
    assert groups[0].name == "conv_proj" and "class_token" in groups[0].prefixes
    assert groups[1].name == "encoder.layers.encoder_layer_0" and "encoder.pos_embedding" in groups[1].prefixes
    assert groups[-1].name == "encoder.ln"
    assert backbone.preprocessing.min_size == backbone.preprocessing.input_size == 32


def test_squeezenet_conv_classifier_becomes_pooled_features():
    backbone = _build("squeezenet1_1", 32)
    assert backbone.extra["classifier"] == "classifier.1"
    assert isinstance(backbone.module.classifier[1], nn.Identity)
    assert backbone.feature_dim == 512


def test_fixed_size_architectures_refuse_other_sizes(empty_hub):
    with pytest.raises(ConfigError, match=r"vit_b_16 cannot take --image-size 100 .*96, 112"):
        _build("vit_b_16", 100)
    with pytest.raises(ConfigError, match=r"maxvit_t cannot take --image-size 100 .*224"):
        _build("maxvit_t", 100)
    # With pretrained weights the size is the weights' own; refused before any download is tried.
    with pytest.raises(ConfigError, match=r"accepts only --image-size 224"):
        _build("vit_b_16", 64, pretrained=True)
    assert "url" not in empty_hub
    assert tlcore_torchvision.accepted_sizes_near("vit_b_16", 40)[:2] == [32, 48]
    assert tlcore_torchvision.accepted_sizes_near("resnet18", 40) == [40]


def test_pretrained_unavailable_is_one_line_weights_error(empty_hub):
    with pytest.raises(WeightsError) as caught:
        _build("mobilenet_v3_small", 32, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "could not be downloaded" in message and "--weights none" in message and "--weights PATH" in message
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert empty_hub["timeout"] == backbones.DOWNLOAD_TIMEOUT_S  # the download could not hang
    assert socket.getdefaulttimeout() is None  # and the process-wide default is restored


def test_pretrained_from_hub_cache(empty_hub):
    """A weights file already in the hub cache is used without the network."""
    weights = backbones.default_weights("squeezenet1_1")
    expected = torchvision.models.squeezenet1_1(weights=None).state_dict()
    cached = backbones.cache_file(weights)
    cached.parent.mkdir(parents=True)
    torch.save(expected, cached)
    assert backbones.info("torchvision:squeezenet1_1") == {"pretrained": True, "offline": True}
    backbone = _build("squeezenet1_1", 32, pretrained=True)
    assert backbone.weights == "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1 (DEFAULT)"
    for key, value in backbone.module.state_dict().items():
        assert torch.equal(value, expected[key])
    assert "url" not in empty_hub


def test_corrupt_cached_file_is_weights_error(empty_hub):
    cached = backbones.cache_file(backbones.default_weights("squeezenet1_1"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not be loaded .*delete the file"):
        _build("squeezenet1_1", 32, pretrained=True)


def test_model_without_pretrained_weights(monkeypatch):
    monkeypatch.setattr(backbones, "default_weights", lambda name: None)
    with pytest.raises(WeightsError, match="has no pretrained weights"):
        _build("resnet18", 32, pretrained=True)
    backbone = _build("resnet18", 32)
    assert backbone.preprocessing.input_size == 224 and backbone.preprocessing.crop_pct == 0.875
    assert backbones.info("torchvision:resnet18") == {"pretrained": False, "offline": False}


def test_names_resolve_and_info(empty_hub):
    names = tlcore_torchvision.backbone_names()
    assert len(names) == len(torchvision.models.list_models(module=torchvision.models))
    assert "torchvision:resnet18" in names and "torchvision:vit_b_16" in names
    assert tlcore_torchvision.resolve("torchvision:resnet18") is backbones.factory
    assert tlcore_torchvision.resolve("torchvision:resnt18") is None
    assert tlcore_torchvision.resolve("torchvision:fasterrcnn_resnet50_fpn") is None  # detection, not classification
    assert tlcore_torchvision.resolve("timm:resnet18") is None
    assert tlcore_torchvision.info("torchvision:resnet18") == {"pretrained": True, "offline": False}


def test_through_the_plugin_host():
    reset_host()
    try:
        entry = catalog("backbones").resolve("torchvision:resnet18")
        assert entry.plugin == "torchvision"
        backbone = entry.factory("torchvision:resnet18", BackboneOptions(image_size=32))
        _check_forward(backbone, 32)
        with pytest.raises(UnknownNameError, match="did you mean torchvision:resnet18"):
            catalog("backbones").resolve("torchvision:resnt18")
        rows = catalog("backbones").listing("torchvision:resnet1*", with_info=True)
        assert [r.name for r in rows] == ["torchvision:resnet101", "torchvision:resnet152", "torchvision:resnet18"]
        assert set(rows[0].info) == {"pretrained", "offline"}
    finally:
        reset_host()


@pytest.mark.slow
def test_every_classification_model_builds():
    """Every listed model at a small accepted size, train and eval mode (run with -m slow; minutes)."""
    failures = []
    for name in backbones.model_names():
        try:
            if backbones._size_parameter(name) is not None:
                size = tlcore_torchvision.accepted_sizes_near(name, 32)[0]
                backbone = _build(name, size)
            else:
                backbone = _build(name)
                size = max(backbone.preprocessing.min_size, 32)
            backbone.validate()
            _check_forward(backbone, size)
            if backbone.preprocessing.min_size != size:  # the advertised minimum works too
                backbone.module.eval()
                with torch.no_grad():
                    backbone.module(torch.zeros(1, 3, backbone.preprocessing.min_size, backbone.preprocessing.min_size))
        except Exception as error:  # collect them all, report at the end
            failures.append(f"{name}: {type(error).__name__}: {error}")
        finally:
            backbone = None
            gc.collect()
    assert not failures, "\n".join(failures)
