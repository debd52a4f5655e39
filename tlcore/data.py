"""From a plugin's raw images to batches: colour conversion, transforms, loaders.

Transforms follow the backbone's preprocessing (mean, std, interpolation,
crop), whatever plugin supplied the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision.transforms import InterpolationMode, v2

from tlcore import images
from tlcore.backbone import Preprocessing
from tlcore.dataset import TensorImageDataset
from tlcore.errors import DataError
from tlcore.interrupt import ignore_stop_signals

TRAIN_CROP_SCALE = (0.35, 1.0)  # milder than ImageNet's (0.08, 1): fine-tuning sets are small


def to_rgb(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """Any PIL mode or image tensor to RGB ``(3, H, W)`` by :func:`tlcore.images.to_rgb` (kept here for old imports)."""
    return images.to_rgb(image)


def build_image_transform(
    pre: Preprocessing, image_size: int, *, train: bool, augment: str, flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The geometry for one uint8 RGB image, uint8 out: augmentation in training, resize and centre-crop otherwise.

    Normalising is left to the device (:class:`tlcore.batches.Normalise`): images travel as uint8.
    ``augment`` is standard (random resized crop, and a horizontal flip when ``flip``), none, or a policy
    (randaugment, trivialaugment, augmix: torchvision's, applied after the crop and flip).
    """
    from tlcore.batch_augment import make_policy  # the policies the memory pipeline applies on the device too

    interpolation = InterpolationMode(pre.interpolation)
    policy = make_policy(augment)
    if train and augment != "none":
        steps = [v2.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=interpolation, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        if policy is not None:
            steps.append(policy)
        return v2.Compose(steps)
    resize = pre.resize_for(image_size)
    return v2.Compose([v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(image_size)])


def build_transform(
    pre: Preprocessing, image_size: int, *, train: bool, augment: str, flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The whole transform for one uint8 RGB image, normalised float out (inference, one image at a time)."""
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    return v2.Compose([build_image_transform(pre, image_size, train=train, augment=augment, flip=flip), *normalise])


def plain_label(label) -> int | torch.Tensor:
    """A dataset's label as batches carry it: an int class index, or a float32 multi-hot row ``[C]`` as it is."""
    if isinstance(label, torch.Tensor) and label.ndim == 1:
        return label.float()
    return int(label)


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


def collate_indexed(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """:func:`collate_skipping` for items ``(image, label, index)``: the dataset positions of the readable ones last."""
    unreadable = [item.reason for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    if not readable:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0), empty, unreadable, empty
    images, labels, indices = default_collate(readable)
    return images, labels, unreadable, indices


class TransformedDataset(Dataset):
    """Applies colour conversion and a transform to a plugin's dataset, lazily per item.

    Keys may be ``(epoch, index)`` pairs (from :class:`EpochSampler`): the
    transform's randomness is then seeded per image and epoch, so the same run
    sees the same augmented images whatever the number of workers, and a
    resumed run sees exactly what the uninterrupted one would have.
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable[[torch.Tensor], torch.Tensor],
        seed: int = 0,
        *,
        tolerant: bool = False,
        with_index: bool = False,
    ):
        self.base = base
        self.transform = transform
        self.seed = seed
        self.tolerant = tolerant  # return Unreadable for an image that cannot be decoded, instead of raising
        self.with_index = with_index  # items (image, label, index): which images a batch holds (collate_indexed)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            image, label = self.base[index]
            image = images.to_rgb(image, f"#{index}")  # any decoding failure is a DataError
        except (DataError, OSError, ValueError, SyntaxError) as error:  # a corrupt file, as the dataset reports it
            if not self.tolerant:
                raise
            return Unreadable(str(error) if isinstance(error, DataError) else f"image {index}: {error}")
        if epoch is None:
            label = plain_label(label)
            return (self.transform(image), label, index) if self.with_index else (self.transform(image), label)
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; the caller's stream is left as it was
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(image), plain_label(label)


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
        *,
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


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """How an epoch of ``count`` images is cut into batches: ``(start, stop)`` positions, in order.

    Batches of ``batch_size``, the last one smaller; a last batch of a single
    image joins the one before it (``batch_size + 1`` images), because
    BatchNorm cannot normalise one image in training ("Expected more than 1
    value per channel"). Every pipeline cuts epochs this way, so the number of
    steps, and where a resumed epoch starts (a multiple of ``batch_size``),
    are the same in all of them.
    """
    bounds = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if batch_size > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:  # batches of one were asked for
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def batch_count(count: int, batch_size: int) -> int:
    """``len(batch_bounds(count, batch_size))``, without listing them."""
    full, rest = divmod(count, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


class CutBatches(Sampler):
    """A batch sampler: the keys of ``sampler`` (or ``range(size)``) cut as :func:`batch_bounds` says."""

    def __init__(self, sampler: Sampler | None, batch_size: int, size: int):
        self.sampler, self.batch_size, self.size = sampler, batch_size, size

    def __iter__(self):
        keys = list(self.sampler) if self.sampler is not None else list(range(self.size))
        for start, stop in batch_bounds(len(keys), self.batch_size):
            yield keys[start:stop]

    def __len__(self) -> int:
        return batch_count(len(self.sampler) if self.sampler is not None else self.size, self.batch_size)


def default_workers(dataset: Dataset, requested: int | None) -> int:
    """In-memory data needs no worker processes; files get up to 8, bounded by the cores."""
    if requested is not None:
        return requested
    if isinstance(dataset, TensorImageDataset):
        return 0
    return min(8, os.cpu_count() or 1)


def make_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler | None, workers: int, *, pin_memory: bool, collate_fn=None
) -> DataLoader:
    """A DataLoader over ``sampler``'s keys (None: dataset order); the sampler alone decides the order.

    Batches are cut by :func:`batch_bounds`: a last batch of one image joins the one before it.
    """
    return DataLoader(
        dataset,
        batch_sampler=CutBatches(sampler, batch_size, len(dataset)),  # type: ignore[arg-type]
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
        worker_init_fn=ignore_stop_signals,  # a signal to the process group is the main process's to handle
        # its own generator: without one, each new iterator draws from the global stream, and a resumed run
        # (which makes one iterator more) would see different dropout than the run it continues
        generator=torch.Generator().manual_seed(0),
    )
