"""From a plugin's raw images to batches: colour conversion, transforms, loaders.

Transforms follow the backbone's preprocessing (mean, std, interpolation,
crop), whatever plugin supplied the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import InterpolationMode, v2

from tlcore.backbone import Preprocessing
from tlcore.dataset import TensorImageDataset
from tlcore.errors import DataError

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


def build_image_transform(
    pre: Preprocessing, image_size: int, train: bool, augment: str, flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The geometry for one uint8 RGB image, uint8 out: augmentation in training, resize and centre-crop otherwise.

    Normalising is left to the device (:class:`tlcore.batches.Normalise`): images travel as uint8.
    """
    interpolation = InterpolationMode(pre.interpolation)
    if train and augment == "standard":
        steps = [v2.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=interpolation, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)
    resize = max(image_size, int(round(image_size / pre.crop_pct)))
    return v2.Compose([v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(image_size)])


def build_transform(
    pre: Preprocessing, image_size: int, train: bool, augment: str, flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The whole transform for one uint8 RGB image, normalised float out (inference, one image at a time)."""
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    return v2.Compose([build_image_transform(pre, image_size, train, augment, flip), *normalise])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one image in one epoch: independent of order, workers and resumption."""
    return (seed * 1_000_003 + epoch) * 1_000_033 + index & (2**63 - 1)


@dataclass(frozen=True)
class Unreadable:
    """Stands in for an image that could not be decoded; the loop skips it (or stops under --strict)."""

    reason: str  # names the file


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable items; return the reasons for the unreadable ones beside them."""
    unreadable = [item.reason for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    if not readable:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), unreadable
    images, labels = default_collate(readable)
    return images, labels, unreadable


class TransformedDataset(Dataset):
    """Applies colour conversion and a transform to a plugin's dataset, lazily per item.

    Keys may be ``(epoch, index)`` pairs (from :class:`EpochSampler`): the
    transform's randomness is then seeded per image and epoch, so the same run
    sees the same augmented images whatever the number of workers, and a
    resumed run sees exactly what the uninterrupted one would have.
    """

    def __init__(
        self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0, tolerant: bool = False
    ):
        self.base = base
        self.transform = transform
        self.seed = seed
        self.tolerant = tolerant  # return Unreadable for an image that cannot be decoded, instead of raising

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            image, label = self.base[index]
            image = to_rgb(image)
        except (DataError, OSError, ValueError) as error:  # a truncated or corrupt file, as the dataset reports it
            if not self.tolerant:
                raise
            return Unreadable(str(error) if isinstance(error, DataError) else f"image {index}: {error}")
        if epoch is None:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; the caller's stream is left as it was
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image), int(label)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys in an order that depends only on the seed and the epoch.

    Shuffled with a generator seeded per epoch (no state carried between
    epochs), or drawn with replacement by ``weights`` (balanced sampling).
    ``start`` skips the first keys of an epoch, for resuming mid-epoch;
    ``rank`` and ``world_size`` give each process of a distributed run its
    own share of every epoch (equal, by wrapping around, when ``even``).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool = True,
        weights: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ):
        self.size, self.seed, self.shuffle, self.weights = size, seed, shuffle, weights
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order to yield, skipping its first ``start`` keys (of this process)."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        """This process's indices of the current epoch, before skipping."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 7919 + self.epoch)
        if self.weights is not None:
            indices = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        elif self.shuffle:
            indices = torch.randperm(self.size, generator=generator).tolist()
        else:
            indices = list(range(self.size))
        if self.world_size > 1 and self.even:  # training: pad by wrapping so every process takes as many steps
            total = self._per_rank() * self.world_size
            indices = [indices[i % len(indices)] for i in range(total)]
        return indices[self.rank :: self.world_size]

    def _per_rank(self) -> int:
        """How many keys this process gets per epoch, counted without drawing the order."""
        if self.world_size > 1 and self.even:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self):
        for index in self.order()[self.start :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return max(0, self._per_rank() - self.start)


def default_workers(dataset: Dataset, requested: int | None) -> int:
    """In-memory data needs no worker processes; files get up to 8, bounded by the cores."""
    if requested is not None:
        return requested
    if isinstance(dataset, TensorImageDataset):
        return 0
    return min(8, os.cpu_count() or 1)


def make_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler | None, workers: int, pin_memory: bool, collate_fn=None
) -> DataLoader:
    """A DataLoader over ``sampler``'s keys (None: dataset order); the sampler alone decides the order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
        # its own generator: without one, each new iterator draws from the global stream, and a resumed run
        # (which makes one iterator more) would see different dropout than the run it continues
        generator=torch.Generator().manual_seed(0),
    )
