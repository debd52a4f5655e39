"""Use tlcore from Python with no package at all: register parts in code, train, read the results.

    python examples/train_from_python.py [--epochs 3] [--output DIR]

A backbone, a dataset and a callback are defined below and registered for the
duration of a ``with tlcore.registered(...)`` block; ``tlcore.fit`` takes the
same options as ``tlcore run`` (as keyword arguments) and returns the run's
folder, per-epoch metrics and trained model. Set TLCORE_PLUGINS= (empty) to
skip loading installed plugins, which this script does not need.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import tlcore
from tlcore import Callback

COLOURS = ["red", "green", "blue"]


def colour_dataset(name: str, options: tlcore.DatasetOptions) -> tlcore.DatasetSplits:
    """Noisy 16x16 images in which one colour channel is brighter: the class is that channel."""
    generator = torch.Generator().manual_seed(options.seed)
    labels = torch.arange(len(COLOURS)).repeat(32)
    images = torch.randint(0, 120, (len(labels), 3, 16, 16), generator=generator)
    images[torch.arange(len(labels)), labels] += 100
    images = images.to(torch.uint8)
    cut = int(len(labels) * (1 - options.val_fraction))
    return tlcore.DatasetSplits(
        classes=COLOURS,
        train=tlcore.TensorImageDataset(images[:cut], labels[:cut]),
        val=tlcore.TensorImageDataset(images[cut:], labels[cut:]),
    )


def conv_backbone(name: str, options: tlcore.BackboneOptions) -> tlcore.Backbone:
    """Two conv-BN-ReLU layers, globally pooled to 16 features, in two layer groups."""
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return tlcore.Backbone(
        name=name,
        module=module,
        feature_dim=16,
        preprocessing=tlcore.Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3, input_size=16, crop_pct=1.0, min_size=8),
        layer_groups=[tlcore.LayerGroup("low", ("0", "1")), tlcore.LayerGroup("high", ("3", "4"))],
    )


class RecordAccuracy(Callback):
    """Appends every epoch's val_acc to a list the script reads after the run."""

    def __init__(self, into: list[float]):
        self.into = into

    def on_epoch_end(self, run, metrics) -> None:
        """Remember the epoch's validation accuracy."""
        self.into.append(metrics["val_acc"])


class InCode:
    """A plugin object: the same hooks an installed package implements, on any object."""

    def __init__(self) -> None:
        self.accuracies: list[float] = []

    @tlcore.hookimpl
    def tlcore_register_backbones(self, register) -> None:
        """Register the backbone."""
        # pretrained=False: it has no pretrained weights, so runs start it from random init without --weights none
        register("code:convnet", conv_backbone, description="two conv layers, defined in a script", pretrained=False)

    @tlcore.hookimpl
    def tlcore_register_datasets(self, register) -> None:
        """Register the dataset."""
        register("code:colours", colour_dataset, description="three colours, made in code")

    @tlcore.hookimpl
    def tlcore_register_callbacks(self, register) -> None:
        """Register the callback (not a default: the run asks for it)."""
        register("code:record", lambda config: RecordAccuracy(self.accuracies), default=False)


def main() -> None:
    """Train once with the in-code parts, then show what the run returned and wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", default=None, help="run folder (default: runs/<dataset>-<backbone>-<time>)")
    args = parser.parse_args()

    plugin = InCode()
    with tlcore.registered(plugin, "in-code"):
        result = tlcore.fit(
            backbone="code:convnet",  # registered with pretrained=False: random init, no weights="none" needed
            dataset="code:colours",
            epochs=args.epochs,
            batch_size=16,
            lr=0.02,
            device="cpu",
            callbacks="+code:record",  # the defaults (progress, metrics, checkpoint) plus ours
            output=args.output,
        )

    best = result.best
    print(f"folder     {result.output_dir}")
    print(f"files      {', '.join(sorted(path.name for path in result.output_dir.iterdir()))}")
    print(f"best       epoch {best['epoch']}, val_acc {best['val_acc']:.3f}")
    print(f"recorded   {json.dumps(plugin.accuracies)}")  # what our callback saw
    print(f"model      {type(result.model).__name__}, {sum(p.numel() for p in result.model.parameters()):,} parameters")

    # Outside the `with` block the parts are gone again; errors the user can fix are TlcoreErrors.
    try:
        tlcore.fit(backbone="code:convnet", dataset="code:colours", weights="none")
    except tlcore.TlcoreError as error:
        print(f"afterwards {error}")


if __name__ == "__main__":
    main()
