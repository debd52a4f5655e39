"""Whole-batch image transforms that run on the device the batch is on.

The per-image transforms of :mod:`tlcore.data` run in DataLoader workers, one
image at a time. Data held in memory (CIFAR, digits) skips the workers: its
batches are cut on the device and transformed here, in a few kernels per batch.
Validation resizing uses torchvision's own resize and centre crop on the
batch, so its pixels equal the per-image path's; training crops use
``roi_align``, which crops and resizes every image of a batch to its own box
in one call (with area averaging where a crop shrinks).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios RandomResizedCrop draws from, as torchvision's default
CROP_TRIES = 10  # as torchvision: draw up to ten boxes, keep the first that fits, else a centre crop


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` grey batches as RGB (a view, no copy); RGB batches unchanged."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (crop boxes, flip coins) on ``device`` without stalling the host.

    From pageable memory a copy to the GPU waits for the GPU's queue; from pinned memory it is queued behind it.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def random_crop_boxes(
    count: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's boxes for ``count`` images of one size, drawn at once; and a flip coin per image.

    Returns boxes ``(count, 4)`` as ``x1, y1, x2, y2`` in pixels and a bool
    tensor ``(count,)``. Same distribution as torchvision's per-image sampler:
    up to ten tries of area and log-uniform aspect ratio, first fit wins, else
    the largest centred crop within the ratio range.
    """
    area = height * width
    target = area * torch.empty(count, CROP_TRIES).uniform_(*scale, generator=generator)
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    log_ratio = torch.empty(count, CROP_TRIES).uniform_(low, high, generator=generator)
    aspect = torch.exp(log_ratio)
    widths = torch.round(torch.sqrt(target * aspect))
    heights = torch.round(torch.sqrt(target / aspect))
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.to(torch.uint8).argmax(dim=1)  # first fitting try (0 when none fits: replaced below)
    rows = torch.arange(count)
    w, h = widths[rows, first], heights[rows, first]
    # the fallback, as torchvision: the whole image, narrowed to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fallback_w, fallback_h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fallback_w, fallback_h = round(height * CROP_RATIO[1]), height
    else:
        fallback_w, fallback_h = width, height
    none_fit = ~fits.any(dim=1)
    w = torch.where(none_fit, torch.tensor(float(fallback_w)), w)
    h = torch.where(none_fit, torch.tensor(float(fallback_h)), h)
    offsets = torch.rand(count, 2, generator=generator)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    top = torch.where(none_fit, torch.floor((height - h) / 2), top)
    left = torch.where(none_fit, torch.floor((width - w) / 2), left)
    flips = torch.rand(count, generator=generator) < 0.5
    return torch.stack([left, top, left + w, top + h], dim=1), flips


def random_resized_crop(
    images: torch.Tensor, size: int, boxes: torch.Tensor, flips: torch.Tensor | None
) -> torch.Tensor:
    """Crop each image of ``images`` (N, C, H, W) to its box, resize to ``size``, flip where asked.

    ``boxes`` and ``flips`` are CPU tensors (as :func:`random_crop_boxes` draws them).
    Returns float32 in the input's value range (0..255 for uint8 input).
    ``roi_align`` samples bilinearly at ``aligned`` pixel centres and averages
    ``ceil(box / size)`` samples per output pixel, so shrinking crops are
    filtered rather than aliased.
    """
    owners = torch.arange(len(images), dtype=torch.float32)[:, None]  # the image each box belongs to
    rois = to_device_async(torch.cat([owners, boxes], 1), images.device)
    out = roi_align(images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    if flips is not None:
        out = torch.where(to_device_async(flips, images.device)[:, None, None, None], out.flip(-1), out)
    return out


def resize_center_crop(images: torch.Tensor, size: int, resize: int, interpolation: str) -> torch.Tensor:
    """Validation geometry for a batch: shorter side to ``resize``, centre crop ``size``.

    torchvision's kernels on the whole batch: each image gets exactly the
    pixels the per-image validation transform gives it.
    """
    images = TF.resize(images, [resize], interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.center_crop(images, [size, size])
