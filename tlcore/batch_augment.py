"""Whole-batch image transforms that run on the device the batch is on.

The per-image transforms of :mod:`tlcore.data` run in DataLoader workers, one
image at a time. Data held in memory (CIFAR, digits) skips the workers: its
batches are cut on the device and transformed here, in a few kernels per batch.
Validation resizing uses torchvision's own resize and centre crop on the
batch, so its pixels equal the per-image path's; training crops resize
every image of a batch to its own box with two batched matrix products.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2
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


def filter_weights(distance: torch.Tensor, interpolation: str) -> torch.Tensor:
    """The resize kernel at ``distance`` (in source pixels, divided by the shrink factor when shrinking).

    Bicubic is A = -0.5, the PIL-compatible kernel torchvision's resize uses with
    ``antialias=True``; bilinear is the triangle.
    """
    d = distance.abs()
    if interpolation == "bicubic":
        a = -0.5
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
    return (1 - d).clamp(min=0)


def resample_matrix(start: torch.Tensor, length: torch.Tensor, size: int, extent: int, interpolation: str) -> torch.Tensor:
    """Per image, the (size x extent) matrix that resizes the span [start, start + length) of an axis to ``size``.

    The weights are torchvision's resize weights for a cropped image with
    ``antialias=True`` (half-pixel centres; a kernel widened by the shrink
    factor when shrinking; taps outside the span dropped and the rest
    renormalised), so a crop sees nothing outside its box.
    """
    device = start.device
    if interpolation == "nearest":
        scale = (length / size)[:, None]
        taps = torch.floor(torch.arange(size, device=device, dtype=torch.float32) * scale)
        taps = torch.minimum(taps, (length - 1)[:, None]) + start[:, None]
        matrix = torch.zeros(len(start), size, extent, device=device)
        return matrix.scatter_(2, taps.long()[..., None], 1.0)
    scale = (length / size)[:, None, None]
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5)[None, :, None] * scale
    sources = torch.arange(extent, device=device, dtype=torch.float32)[None, None, :] - start[:, None, None] + 0.5
    weights = filter_weights((sources - centres) / scale.clamp(min=1), interpolation)  # crop-local pixel centres
    weights = weights * ((sources > 0) & (sources < length[:, None, None]))
    return weights / weights.sum(dim=-1, keepdim=True)


def random_resized_crop(
    images: torch.Tensor, size: int, boxes: torch.Tensor, flips: torch.Tensor | None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Crop each image of ``images`` (N, C, H, W) to its box, resize to ``size``, flip where asked: batched.

    ``boxes`` and ``flips`` are CPU tensors (as :func:`random_crop_boxes` draws them).
    Returns float32 in the input's value range (0..255 for uint8 input).
    Resizing is two batched matrix products with torch's tap weights for the
    backbone's ``interpolation`` (validation uses the same), and like
    torchvision's crop-then-resize an image sees only its own box: on tiny
    images (8x8 digits) letting crops blend with pixels outside the box
    measurably weakens the augmentation. Crops that shrink are antialiased, as
    torchvision's resize with ``antialias=True``.
    """
    device = images.device
    boxes = to_device_async(boxes, device)
    rows = resample_matrix(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size, images.shape[2], interpolation)
    columns = resample_matrix(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size, images.shape[3], interpolation)
    if flips is not None:
        columns = torch.where(to_device_async(flips, device)[:, None, None], columns.flip(1), columns)
    # horizontal pass, then vertical, each held to 0..255 as torchvision's uint8 resize holds its passes
    out = images.float() @ columns[:, None].transpose(-1, -2)
    if interpolation == "bicubic":
        out = out.clamp_(0, 255).round_()
    out = rows[:, None] @ out
    return out.clamp_(0, 255) if interpolation == "bicubic" else out


def resize_center_crop(images: torch.Tensor, size: int, resize: int, interpolation: str) -> torch.Tensor:
    """Validation geometry for a batch: shorter side to ``resize``, centre crop ``size``.

    torchvision's kernels on the whole batch: each image gets exactly the
    pixels the per-image validation transform gives it.
    """
    images = TF.resize(images, [resize], interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.center_crop(images, [size, size])


# --- policy augmentation (--augment randaugment | trivialaugment | augmix) ---------------------------------------

POLICIES = ("randaugment", "trivialaugment", "augmix")  # the --augment choices that add a policy to the crop and flip


def make_policy(augment: str) -> v2.Transform | None:
    """torchvision's v2 policy for an ``--augment`` value, with torchvision's defaults; None for standard and none.

    RandAugment (Cubuk et al. 2020: 2 ops at magnitude 9 of 31), TrivialAugmentWide (Müller & Hutter 2021: one op
    at a random magnitude) and AugMix (Hendrycks et al. 2020: severity 3, three chains of 1-3 ops mixed with
    Dirichlet weights). None of their operations mirrors an image, so a dataset's flip flag still holds.
    """
    if augment not in ("standard", "none", *POLICIES):
        raise ValueError(f"unknown augmentation {augment!r}; accepted: standard, none, {', '.join(POLICIES)}")
    if augment == "randaugment":
        return v2.RandAugment()
    if augment == "trivialaugment":
        return v2.TrivialAugmentWide()
    if augment == "augmix":
        return v2.AugMix()
    return None


@dataclass(frozen=True)
class PolicyDraw:
    """What a policy decided for one image: its chains of ``(operation, magnitude)`` and, for AugMix, its weights.

    ``weights`` is None for RandAugment and TrivialAugment (one chain, its
    output is the image); for AugMix it is the Dirichlet draws ``(m, w)``:
    ``m`` (2,) weighs the original against the mixture, ``w`` (chains,) the chains.
    """

    chains: tuple[tuple[tuple[str, float], ...], ...]
    weights: tuple[torch.Tensor, torch.Tensor] | None


def draw_policy(policy: v2.Transform, height: int, width: int, seed: int) -> PolicyDraw:
    """The operations ``policy`` applies to one ``height`` x ``width`` image when torch's CPU generator holds ``seed``.

    torchvision's own ``forward`` makes the draws, on a stand-in image whose
    operations are recorded instead of run: the same decisions, in the same
    order, as ``torch.manual_seed(seed); policy(image)`` would make, so the
    batched path below and the per-image loader path apply one distribution.
    The caller's random state is left as it was.
    """
    ops: list[list[tuple[str, float]]] = []
    weights: list[torch.Tensor] = []
    returned: list[torch.Tensor] = []  # what each recorded op returned: an op applied to one of them continues a chain

    def record(image, transform_id, magnitude, interpolation, fill):
        if not any(image is out for out in returned):
            ops.append([])  # applied to the original image: a new chain
        ops[-1].append((transform_id, float(magnitude)))
        returned.append(image.view_as(image))
        return returned[-1]

    def record_dirichlet(params: torch.Tensor) -> torch.Tensor:
        weights.append(torch._sample_dirichlet(params))
        return weights[-1]

    recorder = copy.copy(policy)
    recorder._apply_image_or_video_transform = record  # instance attributes shadow the methods
    recorder._sample_dirichlet = record_dirichlet
    stand_in = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(1, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator alone: torch.manual_seed also queues GPU seeding
        recorder(stand_in)
    chains = tuple(tuple(chain) for chain in ops)
    return PolicyDraw(chains, (weights[0][0], weights[1][0]) if weights else None)


def _run_chains(policy: v2.Transform, images: torch.Tensor, chains: list[tuple[tuple[str, float], ...]]) -> torch.Tensor:
    """Apply each image's chain of operations, images that share an operation and magnitude as one sub-batch."""
    out = images
    for step in range(max((len(chain) for chain in chains), default=0)):
        groups: dict[tuple[str, float], list[int]] = {}
        for i, chain in enumerate(chains):
            if step < len(chain) and chain[step][0] != "Identity":
                groups.setdefault(chain[step], []).append(i)
        for (transform_id, magnitude), members in groups.items():
            index = to_device_async(torch.tensor(members), images.device)
            done = policy._apply_image_or_video_transform(
                out.index_select(0, index), transform_id, magnitude, interpolation=policy.interpolation, fill=policy._fill
            )
            out = out.index_copy(0, index, done)  # out of place: the caller's batch is never written
    return out


def apply_policy(policy: v2.Transform, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """``policy`` applied to each image of a uint8 batch ``(N, C, H, W)`` on its device, image ``i`` seeded by ``seeds[i]``.

    Each image gets what torchvision's per-image policy gives it under
    ``torch.manual_seed(seeds[i])`` (:func:`draw_policy`), whatever batch it
    is in and wherever it sits there; the work is batched by operation, so a
    batch costs a few dozen kernel calls, not a few per image. Returns uint8 of
    the same shape. ValueError unless there is one seed per image.
    """
    if len(seeds) != len(images):
        raise ValueError(f"apply_policy needs one seed per image: {len(seeds)} seeds for {len(images)} images")
    draws = [draw_policy(policy, images.shape[-2], images.shape[-1], seed) for seed in seeds]
    if draws and draws[0].weights is not None:  # AugMix: the original and the chains, mixed as torchvision mixes them
        m = torch.stack([draw.weights[0] for draw in draws])  # type: ignore[index]
        combined = torch.stack([draw.weights[1] for draw in draws]) * m[:, 1:2]
        m, combined = to_device_async(m, images.device), to_device_async(combined, images.device)
        mix = m[:, 0].view(-1, 1, 1, 1) * images
        for chain in range(combined.shape[1]):
            augmented = _run_chains(policy, images, [draw.chains[chain] for draw in draws])
            mix.add_(combined[:, chain].view(-1, 1, 1, 1) * augmented)
        return mix.to(images.dtype)  # truncated, as torchvision's AugMix converts back
    return _run_chains(policy, images, [draw.chains[0] if draw.chains else () for draw in draws])
