"""timm models as tlcore backbones: names, building many families, layer groups, sizes and weights errors."""

from __future__ import annotations

import time

import pytest
import torch
from tlcore_timm import groups, provider

from tlcore.backbone import Backbone, BackboneOptions
from tlcore.errors import ConfigError, PluginError, WeightsError

# (name, image size) at small sizes: one or two per family, each a few hundred ms to build on one core.
FAMILIES = [
    ("timm:resnet10t", 64),
    ("timm:efficientnet_b0", 64),
    ("timm:convnext_atto", 64),
    ("timm:vit_tiny_patch16_224", 64),  # fixed size: built for 64 px
    ("timm:regnety_002", 64),
    ("timm:mobilenetv3_small_050", 64),  # pooled width (1024) differs from num_features (288)
    ("timm:densenet121", 64),
    ("timm:inception_v3", 96),
    ("timm:swin_tiny_patch4_window7_224", 64),
    ("timm:ghostnet_050", 64),
    ("timm:levit_128s", 64),
    ("timm:tf_efficientnet_lite0", 64),
]
# Larger models: run with `-m slow`.
SLOW_FAMILIES = [
    ("timm:vgg11", 64),
    ("timm:caformer_s18", 64),  # no group_matcher: grouped by top-level children
    ("timm:rdnet_tiny", 64),  # coarse grouping not implemented: timm's fine grouping
    ("timm:deit_tiny_patch16_224", 96),
    ("timm:maxvit_nano_rw_256", 64),
    ("timm:eva02_tiny_patch14_224", 112),
    ("timm:mobilevit_xxs", 64),
    ("timm:efficientvit_b0", 64),
    ("timm:fastvit_t8", 64),
    ("timm:hgnetv2_b0", 64),
    ("timm:mobilenetv4_conv_small", 64),
    ("timm:cait_xxs24_224", 64),
]


def build(name: str, size: int | None, pretrained: bool = False) -> Backbone:
    entry = provider.resolve(name)
    assert entry is not None, name
    return entry(name, BackboneOptions(pretrained=pretrained, image_size=size))


def check_backbone(name: str, size: int) -> None:
    torch.manual_seed(0)
    backbone = build(name, size)
    backbone.validate()
    assert backbone.weights == "none"
    pre = backbone.preprocessing
    assert pre.min_size <= size or pre.fixed_size
    if pre.fixed_size:
        assert pre.input_size == size == pre.min_size
    names = [g.name for g in backbone.layer_groups]
    assert len(names) >= 2 and names[0] == "stem" or backbone.extra["layer_grouping"] == "top-level children"
    # Every parameter in exactly one group (validate() checks) and the groups in forward order, none empty.
    for group in backbone.layer_groups:
        assert any(group.owns(p) for p, _ in backbone.module.named_parameters()), group
    x = torch.randn(2, 3, size, size)
    backbone.module.train()
    out = backbone.module(x)
    assert out.shape == (2, backbone.feature_dim)
    out.sum().backward()  # trainable end to end
    backbone.module.eval()
    with torch.no_grad():
        assert backbone.module(x).shape == (2, backbone.feature_dim)


@pytest.mark.parametrize(("name", "size"), FAMILIES, ids=[n for n, _ in FAMILIES])
def test_family_builds_with_pooled_features(name, size):
    check_backbone(name, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), SLOW_FAMILIES, ids=[n for n, _ in SLOW_FAMILIES])
def test_more_families_build(name, size):
    if provider.resolve(name) is None:  # newer families (rdnet, mobilenetv4) are absent from early timm 1.0.x
        pytest.skip(f"{name} is not in timm {__import__('timm').__version__}")
    check_backbone(name, size)


def test_feature_dim_is_what_the_model_returns_not_num_features():
    # conv_head after pooling widens the features; timm >= 1.0.4 reports 288 as num_features, earlier 1024.
    backbone = build("timm:mobilenetv3_small_050", 64)
    assert backbone.feature_dim == 1024


def test_preprocessing_comes_from_timm_config():
    lite0 = build("timm:tf_efficientnet_lite0", None).preprocessing
    assert (lite0.mean, lite0.std, lite0.input_size) == ((0.5,) * 3, (0.5,) * 3, 224)
    assert (lite0.interpolation, lite0.crop_pct, lite0.fixed_size) == ("bicubic", 0.875, False)
    vgg_like = build("timm:resnet10t", None).preprocessing
    assert vgg_like.mean == pytest.approx((0.485, 0.456, 0.406)) and vgg_like.min_size == 32
    assert build("timm:inception_v3", None).preprocessing.input_size == 299


def test_fixed_size_model_at_its_default_size():
    backbone = build("timm:levit_128s", None)
    assert backbone.preprocessing.fixed_size and backbone.preprocessing.input_size == 224


def test_size_the_model_cannot_take_is_a_config_error():
    with pytest.raises(ConfigError, match=r"levit_128s cannot run at image size 100.*224 \(its default\)"):
        build("timm:levit_128s", 100)
    with pytest.raises(ConfigError, match="smallest size that works is 96"):
        build("timm:inception_v3", 48)


def test_groups_are_named_stem_stages_neck():
    backbone = build("timm:convnext_atto", 64)
    assert [g.name for g in backbone.layer_groups] == ["stem", "stage1", "stage2", "stage3", "stage4", "neck"]
    assert backbone.layer_groups[0].prefixes == ("stem",)
    assert backbone.layer_groups[-1].prefixes == ("head",)  # the final norm, in timm's head module
    assert backbone.group_of("stages.2.blocks.0.conv_dw.weight") == "stage3"
    vit = build("timm:vit_tiny_patch16_224", 64)
    assert set(vit.layer_groups[0].prefixes) == {"cls_token", "pos_embed", "patch_embed"}
    assert vit.group_of("norm.weight") == "stage12"  # timm merges the final norm into the last block


def test_fallback_grouping_by_top_level_children(monkeypatch):
    import timm

    model = timm.create_model("resnet10t", num_classes=0)
    monkeypatch.setattr(type(model), "group_matcher", lambda self, coarse=False: (_ for _ in ()).throw(NotImplementedError))
    made, how = groups.layer_groups(model)
    assert how == "top-level children"
    assert [g.name for g in made][:2] == ["conv1", "bn1"] and "layer4" in [g.name for g in made]
    Backbone("t", model, 512, build("timm:resnet10t", 64).preprocessing, made).validate()


def test_compress_prefixes_names_whole_modules_only():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))
    assert groups.compress_prefixes(model, ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]) == ("0", "1.0")
    assert groups.compress_prefixes(model, ["1.1.weight"]) == ("1.1.weight",)


def test_tagged_and_bare_names_resolve_without_building():
    assert provider.resolve("timm:resnet50.a1_in1k") is provider.build_backbone
    assert provider.resolve("timm:resnet50") is provider.build_backbone
    assert provider.resolve("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k") is provider.build_backbone


UNKNOWN = ["timm:no_such_model", "timm:resnet50.no_such_tag", "timm:", "resnet50", "torchvision:resnet18"]


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_names_resolve_to_none(name):
    assert provider.resolve(name) is None


def test_names_list_architectures_and_tags():
    names = provider.names()
    assert {"timm:resnet50", "timm:resnet50.a1_in1k", "timm:tf_efficientnet_lite0.in1k"} <= set(names)
    assert all(n.startswith("timm:") for n in names)


def test_info_says_whether_weights_exist_and_are_offline(offline):
    assert provider.info("timm:tf_efficientnet_lite0") == {"pretrained": True, "offline": True}
    assert provider.info("timm:resnet50.a1_in1k") == {"pretrained": True, "offline": False}
    assert provider.info("timm:cs3darknet_s")["pretrained"] is False


def test_info_sees_a_cached_file(monkeypatch, tmp_path):
    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"x")
    monkeypatch.setattr(provider, "_hf_cached", lambda hub_id, filename: cached)
    assert provider.info("timm:resnet18.a1_in1k") == {"pretrained": True, "offline": True}


def test_family_is_registered_through_the_plugin_host(installed_host):
    assert "timm" in installed_host.records and installed_host.records["timm"].error is None
    entry = installed_host.catalog("backbones").resolve("timm:resnet50.a1_in1k")
    assert entry.plugin == "timm" and entry.factory is provider.build_backbone


def test_pretrained_unavailable_offline_fails_fast_in_one_line(offline):
    start = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        build("timm:resnet18.a1_in1k", 64, pretrained=True)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "\n" not in message
    assert "pretrained weights for timm:resnet18.a1_in1k could not be had offline" in message
    assert "--weights none" in message and "--weights PATH" in message


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setattr(provider, "cached_weights_file", lambda cfg: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(WeightsError, match="127.0.0.1 cannot be reached"):
        build("timm:resnet10t", 64, pretrained=True)
    assert time.monotonic() - start < 5


def test_name_without_pretrained_weights_says_so(offline):
    with pytest.raises(WeightsError, match="cs3darknet_s has no pretrained weights in timm"):
        build("timm:cs3darknet_s", 64, pretrained=True)


def test_cached_file_is_loaded_without_network(monkeypatch, tmp_path, offline):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    monkeypatch.setattr(provider, "cached_weights_file", lambda cfg: path)
    backbone = build("timm:resnet10t", 64, pretrained=True)
    assert backbone.weights == "timm:resnet10t.c3_in1k (hub)"
    assert torch.equal(backbone.module.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


def test_broken_model_output_is_a_plugin_error(monkeypatch):
    import timm

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: real(*a, **{**k, "global_pool": ""}))
    with pytest.raises(PluginError, match="not pooled features"):
        build("timm:resnet10t", 64)
