"""example:stripes, a dataset made in code: striped images in four orientations."""

from __future__ import annotations

import torch

from tlcore import DatasetOptions, DatasetSplits, TensorImageDataset

CLASSES = ["horizontal", "vertical", "rising", "falling"]
SIZE = 32
PER_CLASS = 40


def make_stripes(per_class: int = PER_CLASS, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, size, size) of two-coloured stripes with random period, phase and colours, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    count = per_class * len(CLASSES)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    # The coordinate that is constant along each class's stripes (y grows downwards: "rising" is /).
    along = torch.stack([ys, xs, xs + ys, xs - ys + size])[labels]
    period = torch.randint(4, 9, (count, 1, 1), generator=generator)
    phase = torch.randint(0, 8, (count, 1, 1), generator=generator)
    on = ((along + phase) // (period // 2).clamp(min=1)) % 2 == 1
    colours = torch.randint(0, 256, (count, 2, 3, 1, 1), generator=generator)
    images = torch.where(on[:, None], colours[:, 0], colours[:, 1])
    noise = torch.randint(-20, 21, images.shape, generator=generator)
    return (images + noise).clamp(0, 255).to(torch.uint8), labels


def build_stripes(name: str, options: DatasetOptions) -> DatasetSplits:
    """The dataset factory tlcore calls: ``factory(name, options) -> DatasetSplits``; ``options.data_dir`` is unused."""
    images, labels = make_stripes(seed=options.seed)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(options.seed))
    cut = max(1, round(len(labels) * options.val_fraction))
    val, train = order[:cut], order[cut:]
    return DatasetSplits(
        classes=list(CLASSES),
        train=TensorImageDataset(images[train], labels[train]),
        val=TensorImageDataset(images[val], labels[val]),
        flip_invariant=False,  # a mirrored rising stripe is a falling one
        description="synthetic stripes in four orientations",
        preferred_image_size=SIZE,
    )
