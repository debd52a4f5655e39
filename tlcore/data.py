"""From a plugin's raw images to batches: colour conversion, transforms, loaders.

Transforms follow the backbone's preprocessing (mean, std, interpolation,
crop), whatever plugin supplied the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from tlcore.backbone import Preprocessing
from tlcore.dataset import TensorImageDataset

TRAIN_CROP_SCALE = (0.35, 1.0)  # milder than ImageNet's (0.08, 1): fine-tuning sets are small


def to_rgb(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """Any PIL mode (L, P, RGBA, 16-bit, ...) or uint8 tensor (1 or 3 channels) to uint8 RGB (3, H, W)."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 2:
            image = image.unsqueeze(0)
        return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale to 8 bits instead of letting convert() saturate them
        array = np.asarray(image, dtype=np.float32)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def build_transform(
    pre: Preprocessing, image_size: int, train: bool, augment: str, flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform for one uint8 RGB image: augmentation in training, resize and centre-crop otherwise."""
    interpolation = InterpolationMode(pre.interpolation)
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    if train and augment == "standard":
        steps = [v2.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=interpolation, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps + normalise)
    resize = max(image_size, int(round(image_size / pre.crop_pct)))
    return v2.Compose(
        [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(image_size)] + normalise
    )


class TransformedDataset(Dataset):
    """Applies colour conversion and a transform to a plugin's dataset, lazily per item."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(to_rgb(image)), int(label)


def default_workers(dataset: Dataset, requested: int | None) -> int:
    """In-memory data needs no worker processes; files get up to 8, bounded by the cores."""
    if requested is not None:
        return requested
    if isinstance(dataset, TensorImageDataset):
        return 0
    return min(8, os.cpu_count() or 1)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int, pin_memory: bool, sampler=None
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (and the epoch); ``sampler`` replaces shuffling."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=generator,
        worker_init_fn=_seed_worker,
    )


def _seed_worker(worker_id: int) -> None:
    # Each worker's torch seed derives from the loader's generator; numpy and random follow it.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
