"""Batch sources: where the training loop and validation get their batches from.

Every source yields ``(images, labels, unreadable)`` with ``images`` already
on the run's device, normalised and in the model's memory format. Images
travel to the device as uint8 (a quarter of float32's bytes) and are scaled
and normalised there.

- :class:`LoaderBatches`: a DataLoader whose workers decode, crop and resize
  each image (uint8), for data read from files.
- :class:`MemoryBatches`: data held in memory (CIFAR, digits, cached
  features) placed on the device once, cut into batches by index there and
  augmented there: no DataLoader, no worker, no per-image Python in the loop.

Both follow an :class:`~tlcore.data.EpochSampler`, so the two pipelines see
the same images in the same order, and a resumed run continues where it
stopped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from tlcore.backbone import Preprocessing
from tlcore.batch_augment import (
    apply_policy,
    make_policy,
    random_crop_boxes,
    random_resized_crop,
    resize_center_crop,
    to_device_async,
    to_three_channels,
)
from tlcore.data import TRAIN_CROP_SCALE, EpochSampler, batch_bounds, batch_count, sample_seed

DEVICE_MEMORY_SHARE = 0.5  # in-memory data is placed on a GPU when it takes at most this share of its free memory

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


class Normalise:
    """Scale uint8 pixels (or floats in 0..255) to the backbone's normalised input, on the device.

    The same element-wise operations as torchvision's ``ToDtype(scale=True)``
    and ``Normalize``, so both pipelines give the model identical numbers.
    """

    def __init__(self, pre: Preprocessing, device: torch.device, *, channels_last: bool):
        self.device = device
        self.channels_last = channels_last
        self.mean = torch.as_tensor(pre.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(pre.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """A batch ``(N, 3, H, W)`` to float32 model input on the device."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:  # convert while still uint8: a quarter of the bytes to reorder
            images = images.contiguous(memory_format=torch.channels_last)
        # out of place first: a grey batch expanded to RGB shares its memory between channels
        return images.to(torch.float32).mul(1.0 / 255).sub_(self.mean).div_(self.std)


class LoaderBatches:
    """Batches from a DataLoader of uint8 images, normalised on the device."""

    def __init__(self, loader: DataLoader, normalise: Normalise, device: torch.device):
        self.loader, self.normalise, self.device = loader, normalise, device
        sampler = getattr(loader.batch_sampler, "sampler", None)
        self.sampler = sampler if isinstance(sampler, EpochSampler) else None  # None: dataset order

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, unreadable in self.loader:
            if labels.numel() == 0:  # every image of the batch was unreadable
                yield images, labels, unreadable
                continue
            yield self.normalise(images), labels.to(self.device, non_blocking=True), unreadable


class MemoryTransform:
    """The per-batch transform of in-memory images: training augmentation or validation geometry, then normalising."""

    def __init__(
        self, pre: Preprocessing, image_size: int, *, train: bool, augment: str, flip: bool, normalise: Normalise
    ):
        self.pre, self.image_size, self.flip, self.normalise = pre, image_size, flip, normalise
        self.augmented = train and augment != "none"
        self.policy = make_policy(augment) if train else None  # --augment randaugment, trivialaugment, augmix
        self.resize = pre.resize_for(image_size)  # as the per-image validation transform

    @property
    def seeds_per_image(self) -> bool:
        """Whether calls must pass ``image_seeds``: a policy draws its operations per image."""
        return self.policy is not None

    def __call__(self, images: torch.Tensor, seed: int, image_seeds: list[int] | None = None) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` on the device to normalised model input; ``seed`` fixes this batch's crops.

        ``image_seeds`` (one per image, :func:`tlcore.data.sample_seed` of its dataset index) seed a policy's
        operations, so an image gets the same ones whatever batch it falls in; required when
        :attr:`seeds_per_image`.
        """
        if self.augmented:
            generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same crops on every device
            boxes, flips = random_crop_boxes(len(images), images.shape[2], images.shape[3], TRAIN_CROP_SCALE, generator)
            images = random_resized_crop(
                images, self.image_size, boxes, flips if self.flip else None, self.pre.interpolation
            )
            if self.policy is not None:  # torchvision's policies take uint8, as the loader path gives them
                if image_seeds is None:
                    raise ValueError("a policy augmentation needs image_seeds, one per image")
                images = apply_policy(self.policy, images.round().clamp_(0, 255).to(torch.uint8), image_seeds)
        else:
            images = resize_center_crop(images, self.image_size, self.resize, self.pre.interpolation)
        return self.normalise(to_three_channels(images))  # grey expands after resizing: one channel's work


def storage_device(tensors: list[torch.Tensor], device: torch.device) -> torch.device:
    """Where in-memory data lives: on the GPU when all of ``tensors`` fit comfortably, else in host memory.

    The splits are weighed together, before the model is placed: the model and
    its activations need the rest.
    """
    if device.type != "cuda":
        return device if device.type == "mps" else torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    return device if nbytes <= DEVICE_MEMORY_SHARE * free else torch.device("cpu")


class MemoryBatches:
    """Batches cut by index from tensors held on the device (or in host memory when they do not fit there).

    ``sampler`` gives the order and the epoch (None: dataset order, epoch 0);
    ``transform(batch, seed)`` prepares each batch (None: used as stored, as
    cached features are). The seed depends on the seed, the epoch and the
    batch's position only, so a resumed epoch draws the same crops.
    """

    def __init__(
        self,
        data: torch.Tensor,
        labels: torch.Tensor,
        sampler: EpochSampler | None,
        batch_size: int,
        device: torch.device,
        transform: Callable[[torch.Tensor, int], torch.Tensor] | None,
        seed: int = 0,
        held_on: torch.device | None = None,
    ):
        self.held_on = held_on or storage_device([data], device)
        self.data = data.to(self.held_on)
        self.labels = labels.to(device)
        self.sampler, self.batch_size, self.device = sampler, batch_size, device
        self.transform, self.seed = transform, seed

    def sibling(self, sampler: EpochSampler | None, transform) -> MemoryBatches:
        """Another order or transform over the same stored tensors (nothing is copied again)."""
        other = copy.copy(self)
        other.sampler, other.transform = sampler, transform
        return other

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else len(self.labels)
        return batch_count(count, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.sampler is None:
            order, epoch, start = torch.arange(len(self.labels)), 0, 0
        else:
            epoch, start = self.sampler.epoch, self.sampler.start
            order = torch.as_tensor(self.sampler.order()[start:], dtype=torch.int64)
        order_on_data = order.to(self.data.device)
        order_on_device = order.to(self.device)
        for position, stop in batch_bounds(len(order), self.batch_size):  # a last batch of one joins the one before
            picked = order_on_data[position:stop]
            batch = self.data.index_select(0, picked)
            if self.held_on.type == "cpu" and self.device.type != "cpu":  # in host memory: crosses pinned, no stall
                batch = to_device_async(batch, self.device)
            labels = self.labels.index_select(0, order_on_device[position:stop])
            if getattr(self.transform, "seeds_per_image", False):  # a policy: each image seeded by its own index
                seeds = [sample_seed(self.seed, epoch, index) for index in order[position:stop].tolist()]
                batch = self.transform(batch, sample_seed(self.seed, epoch, start + position), seeds)
            elif self.transform is not None:
                batch = self.transform(batch, sample_seed(self.seed, epoch, start + position))
            yield batch, labels, []
