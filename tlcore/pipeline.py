"""Choosing and building a run's data pipeline: in memory on the device, or through a DataLoader.

``--pipeline auto`` holds data sets that live in memory (CIFAR, digits: a
:class:`~tlcore.dataset.TensorImageDataset` per split) on the device and
cuts, augments and normalises their batches there; data read from files goes
through DataLoader workers that decode and crop each image in uint8, and is
normalised on the device. ``--decode device`` has the GPU decode JPEG files
too (:mod:`tlcore.device_decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tlcore.backbone import Preprocessing
from tlcore.batches import LoaderBatches, MemoryBatches, MemoryTransform, Normalise, storage_device
from tlcore.config import RunConfig
from tlcore.data import (
    EpochSampler,
    TransformedDataset,
    build_image_transform,
    collate_skipping,
    make_loader,
)
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError
from tlcore.threads import ThreadBudget, apply_budget, plan_budget, requested_threads

Batches = LoaderBatches | MemoryBatches


def choose_pipeline(config: RunConfig, data: DatasetSplits) -> str:
    """``memory`` or ``loader``: what ``--pipeline`` resolves to for this data."""
    in_memory = isinstance(data.train, TensorImageDataset) and isinstance(data.val, TensorImageDataset)
    if config.pipeline == "memory" and not in_memory:
        raise ConfigError(
            f"--pipeline memory needs a dataset held in memory (such as digits or cifar10); {config.dataset!r} "
            "reads its images one by one: use --pipeline loader or auto"
        )
    if config.decode == "device" and in_memory:
        raise ConfigError(f"--decode device decodes image files; {config.dataset!r} is held in memory: use --decode cpu")
    if config.pipeline == "auto":
        return "memory" if in_memory else "loader"
    return config.pipeline


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``--channels-last``: auto turns it on where convolutions run faster in that layout.

    That is CUDA, and the CPU with oneDNN: on a 2-core x86 machine, training at
    64 px ran 1.94x faster for EfficientNet-Lite0, 1.07x for ResNet-50 and 1.11x
    for ResNet-18 (benchmarks/channels_last.py; docs/performance.md).
    """
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


@dataclass
class Pipeline:
    """The training and validation batch sources of a run, and how they were made."""

    train: Batches
    val: Batches
    kind: str  # "memory" or "loader"
    channels_last: bool
    workers: int  # DataLoader workers (0 for the memory pipeline)
    unaugmented: Callable[[str], Batches]  # "train" or "val": all its images in dataset order, unaugmented
    budget: ThreadBudget | None = None  # how compute threads and workers share the cores (tlcore.threads)

    def describe(self) -> dict:
        """What config.json records of the data path (and of the thread budget: threads, cores, why)."""
        held = getattr(self.train, "held_on", None)
        return {
            **(self.budget.describe() if self.budget is not None else {}),
            "pipeline": self.kind,
            "channels_last": self.channels_last,
            "workers": self.workers,
            "data_held_on": str(held) if held is not None else None,
        }


def build_pipeline(
    config: RunConfig,
    data: DatasetSplits,
    pre: Preprocessing,
    image_size: int,
    device: torch.device,
    train_sampler: EpochSampler,
    val_sampler: EpochSampler,
) -> Pipeline:
    """The batch sources for this run's data, device and options."""
    kind = choose_pipeline(config, data)
    channels_last = use_channels_last(config.channels_last, device)
    normalise = Normalise(pre, device, channels_last=channels_last)
    flip, size, batch = data.flip_invariant, image_size, config.batch_size
    augment = "none" if config.cache_features else config.augment  # cached features are of unaugmented images
    # On the CPU, workers and torch's threads share the cores (tlcore/threads.py); set before any batch is cut.
    threads, threads_from = requested_threads(config.threads)
    budget = plan_budget(data.train, image_size, device.type, threads, config.workers, threads_from=threads_from)
    apply_budget(budget)

    if kind == "memory":
        held_on = storage_device([data.train.images, data.val.images], device)

        def memory(split: TensorImageDataset, sampler: EpochSampler, train: bool) -> MemoryBatches:
            transform = MemoryTransform(pre, size, train=train, augment=augment, flip=flip, normalise=normalise)
            return MemoryBatches(split.images, split.labels, sampler, batch, device, transform, config.seed, held_on)

        sources = {"train": memory(data.train, train_sampler, True), "val": memory(data.val, val_sampler, False)}
        plain = MemoryTransform(pre, size, train=False, augment="none", flip=flip, normalise=normalise)
        return Pipeline(
            sources["train"],
            sources["val"],
            kind,
            channels_last,
            0,
            lambda split: sources[split].sibling(None, plain),  # shares the images already placed on the device
            budget,
        )

    workers = budget.workers
    if config.decode == "device":
        from tlcore.device_decode import decoded_batches  # only runs that ask for GPU decoding need it

        decoding = {"augment": augment, "flip": flip, "normalise": normalise, "workers": workers}

        return Pipeline(
            decoded_batches(data.train, train_sampler, config, pre, size, train=True, **decoding),
            decoded_batches(data.val, val_sampler, config, pre, size, train=False, **decoding),
            kind,
            channels_last,
            workers,
            lambda split: decoded_batches(
                getattr(data, split), None, config, pre, size, train=False, **{**decoding, "augment": "none"}
            ),
            budget,
        )

    # tolerant: an undecodable image comes back as Unreadable and the main process decides (skip and count, or stop
    # under --strict); raised inside a DataLoader worker, it would reach the user wrapped in the worker's traceback
    pin = device.type == "cuda"

    def loader(split, sampler: EpochSampler | None, train: bool) -> LoaderBatches:
        transform = build_image_transform(pre, size, train=train, augment=augment, flip=flip)
        dataset = TransformedDataset(split, transform, config.seed, tolerant=True)
        return LoaderBatches(
            make_loader(dataset, batch, sampler, workers, pin_memory=pin, collate_fn=collate_skipping), normalise, device
        )

    return Pipeline(
        loader(data.train, train_sampler, True),
        loader(data.val, val_sampler, False),
        kind,
        channels_last,
        workers,
        lambda split: loader(getattr(data, split), None, False),
        budget,
    )
