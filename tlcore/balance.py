"""Class imbalance: weights in the loss, and a sampler that sees every class equally often."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from tlcore.errors import ConfigError, DataError
from tlcore.messages import shorten


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every label of a dataset: its ``targets`` when it has them, else read item by item (loads the images).

    int64 ``[N]`` class indices, or float32 ``[N, C]`` multi-hot rows for multi-label data.
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        items = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
        if items and isinstance(items[0], torch.Tensor) and items[0].ndim == 1:
            return torch.stack(items).float()
        targets = [int(label) for label in items]
    targets = torch.as_tensor(targets)
    return targets.float() if targets.ndim == 2 else targets.to(torch.int64)


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class."""
    return torch.bincount(labels, minlength=num_classes)[:num_classes]


def class_weights(spec: str, labels: torch.Tensor, classes: list[str]) -> torch.Tensor:
    """Loss weights: ``auto`` gives n / (k * count_c) (1 for balanced data), or one number per class.

    For multi-label ``labels`` (float ``[N, C]``) they are BCE's ``pos_weight``: ``auto`` gives negatives /
    positives per class (:func:`tlcore.multilabel.positive_weights`). DataError when ``auto`` meets a class
    without a (positive) training image; ConfigError for a wrong count of numbers.
    """
    if spec == "auto" and labels.ndim == 2:
        from tlcore.multilabel import positive_weights

        try:
            return positive_weights(labels)
        except ValueError:
            missing = [classes[i] for i in range(len(classes)) if labels[:, i].sum() == 0]
            raise DataError(f"class_weights auto: no positive training image of class(es) {shorten(missing, 5)}") from None
    if spec == "auto":
        counts = class_counts(labels, len(classes)).double()
        missing = [classes[i] for i in range(len(classes)) if counts[i] == 0]
        if missing:
            raise DataError(f"class_weights auto: no training images of class(es) {shorten(missing, 5)}")
        return (len(labels) / (len(classes) * counts)).float()
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(f"class_weights must be auto or {len(classes)} comma-separated numbers, got {spec!r}") from None
    if len(values) != len(classes) or any(v < 0 for v in values):
        raise ConfigError(
            f"class_weights needs {len(classes)} non-negative numbers (one per class: {shorten(classes, 5)}), "
            f"got {len(values)}"
        )
    return torch.tensor(values, dtype=torch.float32)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-image sampling weights under which every class has the same total probability."""
    counts = class_counts(labels, num_classes).double().clamp(min=1)
    return (1.0 / counts)[labels]
