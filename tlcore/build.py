"""Turning a RunConfig into components through the plugin catalogs.

Each builder resolves a name, calls the plugin's factory, and makes sure a
plugin's bug is reported with the plugin's name rather than as a bare
traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlcore.backbone import Backbone, BackboneOptions, Preprocessing
from tlcore.callbacks.base import Callback, select_callbacks
from tlcore.config import RunConfig
from tlcore.dataset import DatasetOptions, DatasetSplits
from tlcore.errors import ConfigError, DataError, PluginError, TlcoreError
from tlcore.freeze import FreezeOptions, FreezePolicy
from tlcore.heads import HeadOptions
from tlcore.messages import shorten
from tlcore.plugin_options import declared_options
from tlcore.plugins import PluginHost
from tlcore.registry import LABELS, Entry
from tlcore.weights import (
    PretrainedWeights,
    WeightsFile,
    backbone_tensors,
    load_into_backbone,
    read_weights_file,
    strip_prefix,
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


def make_backbone(name: str, host: PluginHost, options: BackboneOptions) -> Backbone:
    """The backbone ``name`` as its plugin's factory builds it: no weights loaded, not validated.

    The one place a backbone is made from a name (training, inference, ``tlcore info``).
    UnknownNameError for a name nothing registered; PluginError when the factory fails or returns no Backbone.
    """
    entry = host.catalog("backbones").resolve(name)
    backbone = call_factory(entry, "backbones", name, options)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"plugin {entry.plugin}: backbone {name!r} returned {type(backbone).__name__}")
    return backbone


def make_head(name: str, host: PluginHost, in_features: int, num_classes: int, options: HeadOptions) -> nn.Module:
    """The head ``name`` for ``in_features`` inputs and ``num_classes`` outputs; PluginError if it is no Module."""
    entry = host.catalog("heads").resolve(name)
    head = call_factory(entry, "heads", in_features, num_classes, options)
    if not isinstance(head, nn.Module):
        raise PluginError(f"plugin {entry.plugin}: head {name!r} returned {type(head).__name__}, not a Module")
    return head


def build_dataset(config: RunConfig, host: PluginHost) -> DatasetSplits:
    """The dataset's splits, checked to be usable; with ``folds`` and ``fold``, that fold of its training split.

    Cross-validation folds (:func:`tlcore.cv.fold_splits`) wrap whatever the
    dataset plugin returned: fold ``fold`` of the training images validates, the rest train.
    """
    if config.folds is not None or config.fold is not None:
        from tlcore.cv import check_fold_options

        check_fold_options(config)  # before the data is read
    entry = host.catalog("datasets").resolve(config.dataset)
    options = DatasetOptions(
        data_dir=Path(config.data_dir).expanduser() if config.data_dir else None,
        seed=config.seed,
        val_fraction=config.val_fraction,
        download=config.download,
        multilabel=config.task == "multilabel",
        # every declared plugin option, checked again: a RunConfig made in Python skips build_config
        extra=declared_options(host).resolve({}, config.plugin_options),
    )
    data = call_factory(entry, "datasets", config.dataset, options)
    if not isinstance(data, DatasetSplits):
        got = type(data).__name__
        raise PluginError(f"plugin {entry.plugin}: dataset {config.dataset!r} returned {got}, not DatasetSplits")
    if len(data.classes) < 2:
        raise DataError(f"dataset {config.dataset!r} has {len(data.classes)} class(es); at least 2 are needed")
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"dataset {config.dataset!r} has {len(data.train)} training and {len(data.val)} validation images")
    check_task(config, data)
    if config.folds is not None:
        from tlcore.cv import fold_splits

        data = fold_splits(data, config.folds, config.fold, config.seed)
    return data


def check_task(config: RunConfig, data: DatasetSplits) -> None:
    """The data fits ``--task``: multi-label splits for multilabel, single-label for multiclass (ConfigError).

    Multi-label ``targets``, where the dataset exposes them, must be float ``[N, len(classes)]`` (PluginError).
    """
    # worded for both `run --task` and `eval` (where the checkpoint's task applies)
    if config.task == "multilabel" and not data.multilabel:
        raise ConfigError(
            f"the task is multilabel, but dataset {config.dataset!r} gave one label per image; datasets that read "
            "several labels per image: csv, imagefolder with a labels.csv, hf (tlcore-hf)"
        )
    if config.task == "multiclass" and data.multilabel:
        raise ConfigError(
            f"dataset {config.dataset!r} gave several labels per image, but the task is multiclass; "
            "train on such data with `tlcore run --task multilabel`"
        )
    if data.multilabel:
        from tlcore.multilabel import LABEL_SEPARATORS

        # a predicted label set is written "a;b" (Prediction.label, CSV cells): a name holding a separator would not
        # read back as itself
        joined = [name for name in data.classes if LABEL_SEPARATORS.search(name)]
        if joined:
            raise DataError(
                f"dataset {config.dataset!r}: multi-label class names cannot hold whitespace, ';' or '|' (they separate "
                f"labels), got {', '.join(repr(name) for name in joined[:5])}; rename them (e.g. golden_retriever)"
            )
        known = set(data.classes)
        for name in data.classes:  # "red,green" beside "red" and "green": two labels written with another separator
            for mark in (",", "/"):
                parts = [part.strip() for part in name.split(mark)]
                if len(parts) > 1 and all(part in known for part in parts):
                    raise DataError(
                        f"dataset {config.dataset!r}: class {name!r} looks like the classes "
                        f"{', '.join(repr(part) for part in parts)} joined by {mark!r}; separate an image's labels "
                        "with whitespace, ';' or '|'"
                    )
        for name in ("train", "val"):
            targets = getattr(getattr(data, name), "targets", None)
            if targets is None:
                continue
            targets = torch.as_tensor(targets)
            if not targets.is_floating_point() or tuple(targets.shape) != (len(getattr(data, name)), len(data.classes)):
                raise PluginError(
                    f"dataset {config.dataset!r}: multi-label {name} targets must be float [{len(getattr(data, name))}, "
                    f"{len(data.classes)}] (images x classes), got {targets.dtype} {tuple(targets.shape)}"
                )


def offered_pretrained_weights(backbone_name: str, host: PluginHost) -> PretrainedWeights | None:
    """The first local pretrained weights a plugin offers for a backbone (newest registration first, built-ins last)."""
    return host.first_result("tlcore_pretrained_weights", backbone=backbone_name)


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
    catalog = host.catalog("backbones")
    entry = catalog.resolve(config.backbone)
    offered = offered_pretrained_weights(config.backbone, host) if config.weights == "pretrained" else None
    provider_pretrained = config.weights == "pretrained" and offered is None
    if provider_pretrained and catalog.declares_pretrained(config.backbone) is False:
        # registered with pretrained=False and no plugin offers weights: random init, said once, not an error
        print(
            f"tlcore: notice: backbone {config.backbone} has no pretrained weights (plugin {entry.plugin} offers "
            "none), so it starts from random initialisation, as with --weights none",
            file=sys.stderr,
        )
        provider_pretrained = False
    options = BackboneOptions(pretrained=provider_pretrained, image_size=image_size)
    backbone = make_backbone(config.backbone, host, options)
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
    backbone.validate(plugin=entry.plugin)
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
    options = HeadOptions(hidden=config.head_hidden, dropout=config.head_dropout)
    return make_head(config.head, host, in_features, num_classes, options)


@dataclass
class HeadReuse:
    """What became of an earlier run's head (``--weights EARLIER_RUN``): which class rows were kept.

    Classes are matched by name: ``kept`` start from the earlier head's rows,
    ``new`` are initialised as a fresh head would be, ``removed`` were in the
    earlier run but not in this data (a renamed class is one removed and one
    new). ``reason`` says why the earlier head was not used at all.
    """

    source: str = ""  # the checkpoint the head came from; "" when --weights named no tlcore checkpoint
    kept: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def reused(self) -> bool:
        """Whether any of the earlier head was kept."""
        return bool(self.kept)

    def to_dict(self) -> dict | None:
        """JSON-ready form for config.json (``resolved.head_classes``); None when no earlier run's checkpoint was given."""
        if not self.source:
            return None
        return {"source": self.source, "kept": self.kept, "new": self.new, "removed": self.removed, "reason": self.reason}

    def notes(self) -> list[str]:
        """The run's opening lines about the head; none when no earlier run's checkpoint was given."""
        if not self.source:
            return []
        if not self.reused:
            return [f"head: a fresh head, not the one of {self.source}: {self.reason}"]
        line = f"head: kept the rows of {len(self.kept)} classes of {self.source} (matched by name)"
        if self.new:
            line += f"; {len(self.new)} new, initialised: {shorten(self.new, 8)}"
        if self.removed:
            line += f"; {len(self.removed)} no longer in the data (removed or renamed): {shorten(self.removed, 8)}"
        return [line]


def class_row_keys(head: nn.Module, num_classes: int) -> set[str]:
    """State-dict keys of the head's class rows: weight and bias of its last linear layer with ``num_classes`` outputs.

    Empty when the head has no such layer (a plugin's head): then only an identical class list reuses it.
    """
    last = None
    for name, module in head.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            last = name
    if last is None:
        return set()
    prefix = f"{last}." if last else ""
    return {f"{prefix}weight", *([f"{prefix}bias"] if head.get_submodule(last).bias is not None else [])}


def reuse_checkpoint_head(
    config: RunConfig, head: nn.Module, classes: list[str], weights_file: WeightsFile | None
) -> HeadReuse:
    """Start the head from an earlier run's, class by class, when it is the same head with the same options.

    The rows of the last linear layer (weight and bias) of each class the
    earlier run knew are copied bit for bit, matched by name, wherever the
    class sits now; the layers before it (the mlp head's hidden layer) are
    copied whole. Classes the earlier run did not have keep the fresh head's
    initialisation. Another head, other options, other tensor shapes or no
    class in common: the whole head starts fresh, and ``reason`` says why.
    """
    meta = weights_file.tlcore_meta if weights_file else None
    if not meta:
        return HeadReuse(new=list(classes))
    source = str(weights_file.path)
    old = meta.get("classes")
    options = {"hidden": config.head_hidden, "dropout": config.head_dropout}
    fresh = HeadReuse(source=source, new=list(classes), removed=[c for c in old or [] if c not in classes])
    if meta.get("head") != config.head or meta.get("head_options") != options:
        fresh.reason = f"it was a {meta.get('head')!r} head with options {meta.get('head_options')}, this run's is " \
            f"{config.head!r} with {options}"
        return fresh
    kept = [name for name in classes if name in old]
    if not kept:
        fresh.reason = f"none of its {len(old)} classes ({shorten(old, 5)}) is in this data"
        return fresh
    tensors = strip_prefix(weights_file.tensors, "head.")
    own = head.state_dict()
    rows = class_row_keys(head, len(classes)) if old != classes else set()
    fits = set(tensors) == set(own) and all(
        tensors[k].shape == (len(old), *own[k].shape[1:]) if k in rows else tensors[k].shape == own[k].shape for k in own
    )
    if not fits or (old != classes and not rows):
        fresh.reason = "its head's tensors do not fit this head"
        return fresh
    state = {}
    new_positions = torch.tensor([classes.index(name) for name in kept])
    old_positions = torch.tensor([old.index(name) for name in kept])
    for key, value in own.items():
        if key in rows:  # the fresh rows of new classes stay; the known ones are copied as they were
            state[key] = value.clone().index_copy_(0, new_positions, tensors[key].to(value.dtype)[old_positions])
        else:
            state[key] = tensors[key]
    head.load_state_dict(state)
    return HeadReuse(source, kept, [c for c in classes if c not in old], fresh.removed)


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
