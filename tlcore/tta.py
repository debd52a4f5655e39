"""Test-time augmentation: several views of each image, their softmax probabilities averaged.

The views are torchvision's five-crop of the evaluation resize (the image's
shorter side resized as validation resizes it, then the centre crop that
validation scores and the four corner crops of the same size), and, where the
checkpoint's training data allowed horizontal flips, the same five crops of
the mirrored image (torchvision's ten-crop): 5 or 10 views. A model's
prediction for an image is the mean of its views' softmax probabilities.

Flips are used only when the checkpoint records that its data allowed them
(``data.flip_invariant``, written since checkpoints carry it): a mirrored
digit is another digit, and a checkpoint that does not say is not flipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from tlcore.backbone import Preprocessing

CROPS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")  # torchvision's five_crop order
CENTRE = CROPS.index("centre")  # the view plain evaluation scores


def flips_allowed(data: Mapping | None) -> bool:
    """Whether a checkpoint's ``data`` record says horizontal flips keep the class; False when it does not say."""
    return isinstance(data, Mapping) and data.get("flip_invariant") is True


def view_names(flip: bool) -> list[str]:
    """The views :class:`TTAViews` makes, in order: the five crops, then (with ``flip``) the five of the mirror."""
    return [*CROPS, *(f"flipped {name}" for name in CROPS)] if flip else list(CROPS)


class TTAViews:
    """One uint8 RGB image ``(3, H, W)`` to its normalised test-time views ``(V, 3, S, S)`` (float32).

    ``V`` is 5 (centre and four corner crops of the evaluation resize) or 10
    with ``flip`` (the same crops of the horizontally mirrored image).
    ``S`` is ``image_size``; resizing, interpolation and normalising are the
    backbone's, as validation's (:func:`tlcore.data.build_transform`), so the
    centre view holds exactly the pixels validation scores.
    """

    def __init__(self, pre: Preprocessing, image_size: int, *, flip: bool):
        self.image_size, self.flip = image_size, flip
        self.names = view_names(flip)
        interpolation = InterpolationMode(pre.interpolation)
        self.resize = v2.Resize(pre.resize_for(image_size), interpolation=interpolation, antialias=True)
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        resized = self.resize(image)
        if self.flip:
            views = TF.ten_crop(resized, [self.image_size, self.image_size])
        else:
            views = TF.five_crop(resized, [self.image_size, self.image_size])
        return self.normalise(torch.stack(list(views)))


class TTAModel(torch.nn.Module):
    """Wraps a classifier: a batch of views ``(N, V, 3, S, S)`` in, the log of the views' mean softmax out ``(N, C)``.

    The output is a log-probability, so whatever treats it as logits gets the
    averaged probabilities back from its softmax and their negative log
    likelihood from cross-entropy (float32 throughout).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        count, per_image = views.shape[:2]
        probabilities = self.model(views.flatten(0, 1)).float().softmax(dim=1)
        mean = probabilities.view(count, per_image, -1).mean(dim=1)
        return mean.clamp_min(torch.finfo(torch.float32).tiny).log()  # a probability of 0 stays finite
