"""Mixup and CutMix on the device, seeded per step so that runs repeat and resume exactly.

Each training micro-batch is mixed with itself reversed (``images.flip(0)``),
one share ``lam`` for the whole batch, as timm's ``Mixup`` does in its default
``mode='batch'`` (timm/data/mixup.py, ``Mixup._params_per_batch`` and
``_mix_batch``): with probability ``mix_prob`` a batch is mixed; with both
alphas set, CutMix is chosen with probability ``switch_prob``; ``lam`` is drawn
from Beta(alpha, alpha); CutMix pastes a box of side ``sqrt(1 - lam)`` of the
image's (``rand_bbox``) and then sets ``lam`` to the share of the image left
uncovered, the box clipped at the borders (``correct_lam=True``).

The targets follow timm's ``mixup_target``: the one-hot labels are smoothed
first (``off = s / C``, ``on = 1 - s + off``), then mixed,
``y * lam + y.flip(0) * (1 - lam)``. The training loss is then the
cross-entropy against these probabilities, with no further smoothing.

Why not torchvision.transforms.v2.MixUp/CutMix: they draw from torch's global
generator (on the device, in a stream shared with dropout), have no mix
probability or label smoothing, and pair with ``roll(1)``; here the draws
come from a NumPy generator keyed by (seed, rank, epoch, step, micro-batch),
on the host, so they cost no device synchronisation, do not depend on
anything else that draws, and a resumed run draws exactly what the
uninterrupted one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixDraw:
    """What one batch's mixing drew: the share of the batch's own images and, for CutMix, the pasted box."""

    lam: float  # in [0, 1]; 1: unmixed
    box: tuple[int, int, int, int] | None = None  # CutMix: rows [top, bottom), columns [left, right); None: mixup


class Mixing:
    """Mixup and/or CutMix of training batches (see the module docstring for the rule).

    ``mixup``, ``cutmix``: Beta alphas (0: that kind is off; at least one > 0).
    ``mix_prob``: share of batches mixed, in [0, 1]. ``switch_prob``: with
    both on, the share of mixed batches that use CutMix. ``smoothing``: label
    smoothing in [0, 1), applied to the one-hot targets before mixing.
    ``seed`` and ``rank`` key the draws with each batch's position.
    """

    def __init__(
        self,
        *,
        mixup: float,
        cutmix: float,
        mix_prob: float,
        switch_prob: float,
        smoothing: float,
        num_classes: int,
        seed: int,
        rank: int = 0,
    ) -> None:
        if not (mixup > 0 or cutmix > 0):
            raise ValueError("Mixing needs mixup > 0 or cutmix > 0")
        self.mixup, self.cutmix = mixup, cutmix
        self.mix_prob, self.switch_prob = mix_prob, switch_prob
        self.smoothing, self.num_classes = smoothing, num_classes
        self.seed, self.rank = seed, rank

    def draw(self, epoch: int, step: int, position: int, height: int, width: int) -> MixDraw:
        """The draw for micro-batch ``position`` of optimizer step ``step`` (0-based, in ``epoch``) of HxW images."""
        rng = np.random.default_rng([self.seed, self.rank, epoch, step, position])
        if not rng.random() < self.mix_prob:
            return MixDraw(1.0)
        use_cutmix = self.mixup <= 0 or (self.cutmix > 0 and rng.random() < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixDraw(lam)
        # timm's rand_bbox: a box of sqrt(1 - lam) of each side around a uniform centre, clipped to the image
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
        left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)  # the area actually pasted
        return MixDraw(lam, (top, bottom, left, right))

    def targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        """Smoothed one-hot ``labels`` (int64 [N]) mixed with their reverse: float32 [N, num_classes] probabilities."""
        off = self.smoothing / self.num_classes
        on = 1.0 - self.smoothing + off
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
        smoothed = one_hot * (on - off) + off
        return smoothed * lam + smoothed.flip(0) * (1.0 - lam)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int, position: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mix one micro-batch: ``(images, targets, dominant)``.

        ``images`` [N, C, H, W] on the device (not modified: the mixed batch is
        new); ``targets`` float32 [N, num_classes] as :meth:`targets`;
        ``dominant`` int64 [N], each image's label of the larger share (its
        own when ``lam >= 0.5``), against which training accuracy is counted.
        """
        draw = self.draw(epoch, step, position, images.shape[-2], images.shape[-1])
        reverse = images.flip(0)
        if draw.box is not None:
            top, bottom, left, right = draw.box
            mixed = images.clone()
            mixed[:, :, top:bottom, left:right] = reverse[:, :, top:bottom, left:right]
        elif draw.lam < 1.0:
            mixed = images * draw.lam + reverse * (1.0 - draw.lam)
        else:
            mixed = images
        dominant = labels if draw.lam >= 0.5 else labels.flip(0)
        return mixed, self.targets(labels, draw.lam), dominant
