"""Turning a RunConfig into components through the plugin catalogs.

Each builder resolves a name, calls the plugin's factory, and makes sure a
plugin's bug is reported with the plugin's name rather than as a bare
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tlcore.backbone import Backbone, BackboneOptions, Preprocessing
from tlcore.callbacks.base import Callback, select_callbacks
from tlcore.config import RunConfig
from tlcore.dataset import DatasetOptions, DatasetSplits
from tlcore.errors import ConfigError, DataError, PluginError, TlcoreError
from tlcore.freeze import FreezeOptions, FreezePolicy
from tlcore.heads import HeadOptions
from tlcore.plugins import PluginHost
from tlcore.registry import LABELS, Entry
from tlcore.weights import (
    PretrainedWeights,
    WeightsFile,
    backbone_tensors,
    load_into_backbone,
    read_weights_file,
)


def call_factory(entry: Entry, kind: str, *args: Any) -> Any:
    """Call a registered factory; anything but a TlcoreError is a plugin bug and names the plugin."""
    try:
        return entry.factory(*args)
    except TlcoreError:
        raise
    except Exception as error:
        raise PluginError(
            f"plugin {entry.plugin} failed to build {LABELS[kind]} {entry.name!r}: {type(error).__name__}: {error}"
        ) from error


def build_dataset(config: RunConfig, host: PluginHost) -> DatasetSplits:
    """The dataset's splits, checked to be usable."""
    entry = host.catalog("datasets").resolve(config.dataset)
    options = DatasetOptions(
        data_dir=Path(config.data_dir).expanduser() if config.data_dir else None,
        seed=config.seed,
        val_fraction=config.val_fraction,
        download=config.download,
    )
    data = call_factory(entry, "datasets", config.dataset, options)
    if not isinstance(data, DatasetSplits):
        got = type(data).__name__
        raise PluginError(f"plugin {entry.plugin}: dataset {config.dataset!r} returned {got}, not DatasetSplits")
    if len(data.classes) < 2:
        raise DataError(f"dataset {config.dataset!r} has {len(data.classes)} class(es); at least 2 are needed")
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"dataset {config.dataset!r} has {len(data.train)} training and {len(data.val)} validation images")
    return data


def offered_pretrained_weights(backbone_name: str, host: PluginHost) -> PretrainedWeights | None:
    """The first local pretrained weights a plugin offers for a backbone (newest registration first)."""
    for impl in reversed(host.hook_impls("tlcore_pretrained_weights")):
        offered = host.call_impl(impl, backbone=backbone_name)
        if offered is not None:
            return offered
    return None


def read_weights_option(config: RunConfig) -> WeightsFile | None:
    """The file behind ``--weights PATH`` (read once, safely); None for ``pretrained`` and ``none``."""
    if config.weights in ("pretrained", "none"):
        return None
    return read_weights_file(Path(config.weights).expanduser())


def build_backbone(
    config: RunConfig, host: PluginHost, image_size: int | None = None, weights_file: WeightsFile | None = None
) -> Backbone:
    """The backbone with the weights asked for: ``pretrained``, ``none`` or a path.

    ``pretrained`` first asks plugins for local weights (tlcore_pretrained_weights),
    then lets the provider fetch its own. A path may be a weights file, a
    folder holding one, or an earlier run (its backbone; its preprocessing too).
    ``image_size`` is the training size when already known (None: the backbone's own);
    ``weights_file`` is the file of ``--weights PATH`` when the caller read it already.
    """
    entry = host.catalog("backbones").resolve(config.backbone)
    offered = offered_pretrained_weights(config.backbone, host) if config.weights == "pretrained" else None
    provider_pretrained = config.weights == "pretrained" and offered is None
    options = BackboneOptions(pretrained=provider_pretrained, image_size=image_size)
    backbone = call_factory(entry, "backbones", config.backbone, options)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"plugin {entry.plugin}: backbone {config.backbone!r} returned {type(backbone).__name__}")
    if offered is not None:
        load_into_backbone(backbone, offered.verified_state_dict(), offered.source)
        backbone.weights = offered.source
        if offered.preprocessing is not None:
            backbone.preprocessing = offered.preprocessing
    elif config.weights not in ("pretrained", "none"):
        weights_file = weights_file or read_weights_option(config)
        load_into_backbone(backbone, backbone_tensors(weights_file), str(weights_file.path))
        backbone.weights = str(weights_file.path)
        if weights_file.tlcore_meta and "preprocessing" in weights_file.tlcore_meta:
            backbone.preprocessing = Preprocessing.from_dict(weights_file.tlcore_meta["preprocessing"])
    backbone.validate()
    return backbone


def resolve_image_size(config: RunConfig, backbone: Backbone, data: DatasetSplits) -> int:
    """The training size: the option, else the dataset's preference, else the backbone's own size.

    Never below what the architecture accepts.
    """
    size = config.image_size or data.preferred_image_size or backbone.preprocessing.input_size
    if backbone.preprocessing.fixed_size and size != backbone.preprocessing.input_size:
        fixed = backbone.preprocessing.input_size
        raise ConfigError(f"backbone {backbone.name} was built for {fixed}px input and accepts only --image-size {fixed}")
    if size < backbone.preprocessing.min_size:
        minimum = backbone.preprocessing.min_size
        raise ConfigError(f"image size {size} is too small for backbone {backbone.name}; it accepts {minimum} or more")
    return size


def build_head(config: RunConfig, host: PluginHost, in_features: int, num_classes: int) -> nn.Module:
    """The head named in the config, for the backbone's feature width."""
    entry = host.catalog("heads").resolve(config.head)
    options = HeadOptions(hidden=config.head_hidden, dropout=config.head_dropout)
    head = call_factory(entry, "heads", in_features, num_classes, options)
    if not isinstance(head, nn.Module):
        raise PluginError(f"plugin {entry.plugin}: head {config.head!r} returned {type(head).__name__}, not a Module")
    return head


def reuse_checkpoint_head(config: RunConfig, head: nn.Module, classes: list[str], weights_file: WeightsFile | None) -> bool:
    """Start the head from an earlier run's when it was trained for the same classes with the same head.

    Otherwise (other classes, another head) the new head starts fresh. Returns whether it was reused.
    """
    meta = weights_file.tlcore_meta if weights_file else None
    if not meta or meta.get("classes") != classes or meta.get("head") != config.head:
        return False
    if meta.get("head_options") != {"hidden": config.head_hidden, "dropout": config.head_dropout}:
        return False
    tensors = {k[len("head.") :]: v for k, v in weights_file.tensors.items() if k.startswith("head.")}
    own = head.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        return False
    head.load_state_dict(tensors)
    return True


def build_policy(config: RunConfig, host: PluginHost) -> FreezePolicy:
    """The freeze policy named in the config."""
    entry = host.catalog("freeze").resolve(config.freeze)
    options = FreezeOptions(
        bn_mode=config.bn_mode,
        freeze_to=config.freeze_to,
        unfreeze_start=config.unfreeze_start,
        unfreeze_every=config.unfreeze_every,
    )
    policy = call_factory(entry, "freeze", options)
    if not callable(getattr(policy, "trainable_groups", None)):
        raise PluginError(f"plugin {entry.plugin}: freeze policy {config.freeze!r} has no trainable_groups method")
    return policy


def build_callbacks(config: RunConfig, host: PluginHost) -> list[tuple[str, Callback]]:
    """Fresh instances of the selected callbacks, in order."""
    catalog = host.catalog("callbacks")
    return [
        (name, call_factory(catalog.resolve(name), "callbacks", config))
        for name in select_callbacks(catalog, config.callbacks)
    ]
