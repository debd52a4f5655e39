"""``--decode device``: JPEG files decoded on the run's device (nvJPEG on a GPU), cropped and resized there.

DataLoader workers only read each file's bytes; the main process decodes a
whole batch with one ``torchvision.io.decode_jpeg`` call on the device, then
crops, resizes and normalises each image there. Files that are not JPEG
(PNG, BMP, ...) and JPEGs the device decoder rejects are decoded on the CPU
one by one, so a mixed folder still trains; a file nothing can decode is
skipped and counted as in the other pipelines (or stops the run under
``--strict``). Crops are seeded per image and epoch, as in the other pipelines.

The CPU path's rules hold here too (:mod:`tlcore.images`): only regular files
are read; a JPEG reaches the device decoder only when its header, checked in
Python, is sound (markers and segment lengths within the file, an 8-bit
Huffman frame of 1 or 3 components, an end marker) and its size is within
the decompression-bomb limit; its EXIF orientation is applied to the decoded
image. Everything else is decoded by :func:`tlcore.images.decode_image`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from tlcore.backbone import Preprocessing
from tlcore.batch_augment import (
    apply_policy,
    make_policy,
    random_crop_boxes,
    random_resized_crop,
    resize_center_crop,
    to_device_async,
)
from tlcore.batches import Batch, Normalise
from tlcore.config import RunConfig
from tlcore.data import TRAIN_CROP_SCALE, EpochSampler, Unreadable, make_loader, plain_label, sample_seed
from tlcore.errors import ConfigError, DataError
from tlcore.images import JpegHeader, check_pixels, decode_image, orient, read_image_file, read_jpeg_header


class EncodedFiles(Dataset):
    """``(file bytes, label, index)`` for each image file of a dataset that lists its ``samples``."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        path, label = self.samples[index]
        try:
            data = read_image_file(path)  # regular files only: a pipe would hang the worker
        except DataError as error:
            return Unreadable(str(error))
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()), plain_label(label), index  # empty files too


def collate_encoded(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[str]]:
    """The batch's files as one flat byte tensor and their lengths; unreadable files are reported beside them.

    One tensor per batch crosses from a worker, not one per file (each would take a shared-memory handle).
    """
    unreadable = [item.reason for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    data = torch.cat([item[0] for item in readable]) if readable else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([len(item[0]) for item in readable], dtype=torch.int64)
    labels = torch.tensor([item[1] for item in readable], dtype=torch.int64)
    return data, lengths, labels, [item[2] for item in readable], unreadable


def decode_on(device: torch.device, data: list[torch.Tensor], paths: list[str]) -> list[torch.Tensor | str]:
    """Each file as a uint8 RGB image on ``device``, or the reason it could not be decoded.

    Sound JPEGs within the pixel limit go to the device decoder in one call;
    every other file, and every file of a call the device decoder rejects, is
    decoded on the CPU by :func:`tlcore.images.decode_image`.
    """
    decoded: list[torch.Tensor | str | None] = [None] * len(data)
    headers: dict[int, JpegHeader] = {}
    for i, raw in enumerate(data):
        header = read_jpeg_header(raw.numpy())
        if header is None:
            continue  # not a JPEG, or not one whose structure was checked: the CPU decoder takes it
        try:
            check_pixels(header.width, header.height, paths[i])
        except DataError as error:
            decoded[i] = str(error)
            continue
        headers[i] = header
    if headers:
        jpegs = list(headers)
        try:
            files = [headers[i].decoder_bytes(data[i]) for i in jpegs]  # without EXIF: the orientation was read here
            images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpegs, images, strict=True):
                decoded[i] = orient(image, headers[i].orientation)
        except torch.OutOfMemoryError:
            raise  # not a bad file: the run's out-of-memory message says what to do
        except RuntimeError:  # one bad file fails the whole call: decode these one at a time below
            pass
    for i, raw in enumerate(data):
        if decoded[i] is None:
            try:
                decoded[i] = to_device_async(decode_image(raw.numpy().tobytes(), paths[i]), device)
            except DataError as error:
                decoded[i] = str(error)
    return decoded  # type: ignore[return-value]


class DecodedBatches:
    """Batches of image files decoded, cropped and normalised on the device."""

    def __init__(
        self,
        split: Dataset,
        sampler: EpochSampler | None,
        config: RunConfig,
        pre: Preprocessing,
        image_size: int,
        *,
        augmented: bool,
        flip: bool,
        normalise: Normalise,
        workers: int,
        policy: torch.nn.Module | None = None,
    ):
        samples = split.samples  # type: ignore[attr-defined]
        self.paths = [str(path) for path, _ in samples]
        self.loader = make_loader(
            EncodedFiles(samples), config.batch_size, sampler, workers, pin_memory=False, collate_fn=collate_encoded
        )
        self.sampler, self.seed, self.pre, self.size = sampler, config.seed, pre, image_size
        self.augmented, self.flip, self.normalise = augmented, flip, normalise
        self.policy = policy  # torchvision's policy (tlcore.batch_augment.make_policy) after the crop; None: none
        self.resize = pre.resize_for(image_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        device = self.normalise.device
        epoch = self.sampler.epoch if self.sampler is not None else 0
        for flat, lengths, labels, indices, unreadable in self.loader:
            files = list(torch.split(flat, lengths.tolist())) if len(lengths) else []
            images, kept = [], []
            for position, image in enumerate(decode_on(device, files, [self.paths[i] for i in indices])):
                if isinstance(image, str):
                    unreadable.append(image)
                    continue
                images.append(self._geometry(image, sample_seed(self.seed, epoch, indices[position])))
                kept.append(position)
            if not images:
                yield torch.empty(0), torch.empty(0, dtype=torch.int64), unreadable
                continue
            labels = to_device_async(labels[kept], device)
            yield self.normalise(torch.cat(images)), labels, unreadable

    def _geometry(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """One decoded image ``(3, H, W)`` to a ``(1, 3, size, size)`` crop: random in training, centred otherwise."""
        batch = image[None]
        if not self.augmented:
            return resize_center_crop(batch, self.size, self.resize, self.pre.interpolation)
        generator = torch.Generator().manual_seed(seed)
        boxes, flips = random_crop_boxes(1, image.shape[1], image.shape[2], TRAIN_CROP_SCALE, generator)
        crop = random_resized_crop(batch, self.size, boxes, flips if self.flip else None, self.pre.interpolation)
        if self.policy is None:
            return crop
        return apply_policy(self.policy, crop.round().clamp_(0, 255).to(torch.uint8), [seed])  # seeded per image


def decoded_batches(
    split: Dataset,
    sampler: EpochSampler | None,
    config: RunConfig,
    pre: Preprocessing,
    image_size: int,
    *,
    train: bool,
    augment: str,
    flip: bool,
    normalise: Normalise,
    workers: int,
) -> DecodedBatches:
    """The ``--decode device`` batch source for one split; the dataset must list its files as ``samples``."""
    if not isinstance(getattr(split, "samples", None), list):
        raise ConfigError(
            f"--decode device needs a dataset of image files that lists them as `samples` (such as imagefolder); "
            f"{config.dataset!r} does not: use --decode cpu"
        )
    augmented = train and augment != "none"
    policy = make_policy(augment) if augmented else None
    return DecodedBatches(
        split, sampler, config, pre, image_size, augmented=augmented, flip=flip, normalise=normalise, workers=workers,
        policy=policy,
    )
