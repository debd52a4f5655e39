"""The example plugin's parts, registered from the source tree with tlcore's pytest fixtures."""

import json

import pytest
import tlcore_example
import torch
from tlcore_example.stripes import CLASSES
from tlcore_example.training import SUMMARY_FILE, TopHalf

import tlcore

NAMES = {
    "backbones": {"example:smallnet", "example:smallnet-wide"},
    "datasets": {"example:stripes"},
    "freeze": {"example:top-half"},
    "callbacks": {"example:summary"},
}


@pytest.fixture
def example(tlcore_register):
    """The plugin module registered on a fresh host, as its entry point would register it."""
    tlcore_register(tlcore_example, "example")


def test_every_part_is_registered_under_the_example_prefix(example, tlcore_host):
    for kind, names in NAMES.items():
        rows = {row.name: row.plugin for row in tlcore_host.catalog(kind).listing("example:*")}
        assert rows == dict.fromkeys(names, "example"), kind


@pytest.mark.parametrize("name, features", [("example:smallnet", 64), ("example:smallnet-wide", 128)])
def test_smallnet_meets_the_backbone_contract(example, tlcore_host, name, features):
    entry = tlcore_host.catalog("backbones").resolve(name)
    backbone = entry.factory(name, tlcore.BackboneOptions())
    backbone.validate()  # every parameter in exactly one layer group, sane preprocessing
    assert [g.name for g in backbone.layer_groups] == ["stem", "stage1", "stage2", "stage3"]
    assert backbone.feature_dim == features
    assert backbone.module(torch.zeros(2, 3, 32, 32)).shape == (2, features)


def test_smallnet_needs_no_weights_none(example, tlcore_cli):
    """Registered with pretrained=False: the default --weights pretrained starts from random init, with a notice."""
    result = tlcore_cli("plan", "--backbone", "example:smallnet", "--epochs", "1")
    assert result.code == 0, result.err
    assert result.out.startswith("plan: example:smallnet (none),")
    assert result.err == (
        "tlcore: notice: backbone example:smallnet has no pretrained weights (plugin example offers none), "
        "so it starts from random initialisation, as with --weights none\n"
    )


def test_stripes_splits_are_balanced_images_of_four_classes(example, tlcore_host):
    data = tlcore_host.catalog("datasets").resolve("example:stripes").factory("example:stripes", tlcore.DatasetOptions())
    assert data.classes == CLASSES and not data.flip_invariant
    assert len(data.train) + len(data.val) == 160 and len(data.val) == 32
    image, label = data.train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and 0 <= label < 4
    assert torch.bincount(torch.cat([data.train.targets, data.val.targets])).tolist() == [40] * 4


def test_top_half_policy_trains_the_upper_groups(tlcore_tiny_backbone):
    assert TopHalf().trainable_groups(["stem", "stage1", "stage2", "stage3"], 0) == ["stage2", "stage3"]
    groups = [group.name for group in tlcore_tiny_backbone.layer_groups]  # any backbone's groups: stem, stage1, stage2
    assert TopHalf().trainable_groups(groups, 5) == ["stage1", "stage2"]


def test_smallnet_takes_small_images(example, tlcore_host, tlcore_tiny_dataset):
    backbone = (
        tlcore_host.catalog("backbones").resolve("example:smallnet").factory("example:smallnet", tlcore.BackboneOptions())
    )
    images = torch.stack([tlcore_tiny_dataset.train[i][0] for i in range(4)]).float() / 255  # 16x16, half the native size
    assert backbone.preprocessing.min_size <= images.shape[-1]
    assert backbone.module(images).shape == (4, backbone.feature_dim)


def test_a_run_with_every_part(example, tlcore_run):
    result = tlcore_run(
        backbone="example:smallnet",
        dataset="example:stripes",
        freeze="example:top-half",
        callbacks="-progress,+example:summary",
        epochs=2,
        lr=0.01,
    )
    backbone = result.model.backbone
    trainable = {name.split(".")[0] for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"stage2", "stage3"}
    summary = json.loads((result.output_dir / SUMMARY_FILE).read_text())
    assert summary["epochs"] == 2 and summary["best_val_acc"] == result.best["val_acc"]
    assert summary["best_epoch"] == result.best["epoch"]


def test_stripes_command_writes_an_image_folder(example, tlcore_cli, tmp_path):
    result = tlcore_cli("example-stripes", tmp_path / "stripes", "--per-class", "2")
    assert result.code == 0, result.err
    assert "wrote 16 images of 4 classes" in result.out
    for split in ("train", "val"):
        assert sorted(p.name for p in (tmp_path / "stripes" / split).iterdir()) == sorted(CLASSES)
        assert len(list((tmp_path / "stripes" / split).rglob("*.png"))) == 8
    again = tlcore_cli("example-stripes", tmp_path / "stripes")
    assert again.code == 2 and "already exists and is not an empty folder" in again.err
