"""The dataset contract: what a dataset plugin hands to the core.

Datasets yield raw images; the core owns transforms, so preprocessing always
follows the backbone's weights whatever plugin supplied the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetOptions:
    """What the core asks of a dataset factory besides the name."""

    data_dir: Path | None = None  # --data-dir; None when the user gave none
    seed: int = 0  # for any split the dataset makes itself
    val_fraction: float = 0.2  # share of train held out when the data has no validation split
    download: bool = True  # fetch missing files where the dataset can and the network allows
    # --task multilabel: the run wants multi-label data (DatasetSplits.multilabel); a dataset that can read
    # several labels per image (CSV cells, a labels.csv) reads them so, one that cannot leaves it and the core says so
    multilabel: bool = False
    # the options plugins declared (tlcore.plugin_options), by name, the declared default where none was given;
    # a factory called directly (tests, Python) may get none of them, so it reads them with .get(name, default)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSplits:
    """A dataset ready for training.

    ``train`` and ``val`` yield ``(image, label)`` with ``image`` a PIL image of
    any mode or a ``uint8`` tensor ``(C, H, W)`` with C in {1, 3}, and ``label``
    an int index into ``classes`` or, when ``multilabel`` is true, a float32
    multi-hot tensor ``[C]`` (1.0 for each class the image shows, columns in
    ``classes`` order; :func:`tlcore.multilabel.multi_hot`). A dataset that can list its labels without
    loading images exposes them as ``targets`` (torchvision's convention);
    class weights and balanced sampling use it. Splits held in memory as
    :class:`TensorImageDataset` go through the memory pipeline (placed on the
    device, batches cut and augmented there); a dataset of files that lists
    them as ``samples`` (``(path, label)`` pairs) can be decoded on the GPU
    (``--decode device``).
    """

    classes: list[str]
    train: Dataset
    val: Dataset
    flip_invariant: bool = True  # False where a mirrored image is another class (digits, text)
    description: str = ""
    # The training size to use when --image-size is not given, for data whose images are far smaller than a
    # backbone's native input (8x8 digits gain nothing from 224 px); None means the backbone's own size.
    preferred_image_size: int | None = None
    # Where the validation images came from, in words, for the run's first lines: "val/ (153 images)",
    # "holding out 4 of 20 train images, seed 0". Empty: the core says how many the dataset gave.
    validation: str = ""
    # What else the user should know about the data before training: entries skipped while listing files
    # (named), folders not used. Printed at the start of a run, one line each.
    notes: list[str] = field(default_factory=list)
    # A third split the dataset has besides train and val (a test/ folder next to val/), None when there is none;
    # training never reads it. It may be ``val`` itself where the dataset validates on its official test split
    # (CIFAR), so that `tlcore eval --split test` names it; `--split all` then counts those images once.
    test: Dataset | None = None
    # several classes per image (--task multilabel): labels are multi-hot rows, ``targets`` float32 [N, C]
    multilabel: bool = False

    def validation_note(self) -> str:
        """Where validation comes from, for the run's first lines: ``validation`` or, without one, the count."""
        if self.validation:
            return self.validation
        try:
            count = f"{len(self.val):,} images"  # type: ignore[arg-type]
        except TypeError:
            count = "images"
        return f"{count} the dataset gives as its validation split"

    def run_notes(self) -> list[str]:
        """The lines a run prints about its data before training: where validation came from, then the notes."""
        return [f"validation: {self.validation_note()}", *self.notes]


class TensorImageDataset(Dataset):
    """Images held in memory as one ``uint8`` tensor ``(N, C, H, W)`` with their labels.

    Labels are int64 class indices ``(N,)`` or, for multi-label data, float
    multi-hot rows ``(N, classes)`` (kept as float32). Datasets that fit in
    memory (CIFAR, digits) use it so that the training loop can move them to
    the device in one piece. Raises ValueError for any other shape or dtype.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        multi_hot = labels.ndim == 2 and labels.is_floating_point()
        if (labels.ndim != 1 and not multi_hot) or len(labels) != len(images):
            raise ValueError(
                f"labels must be 1-D class indices or 2-D float multi-hot rows with {len(images)} entries, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.to(torch.float32) if multi_hot else labels.to(torch.int64)

    @property
    def targets(self) -> torch.Tensor:
        """All labels, without touching the images."""
        return self.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        label = self.labels[index]
        return self.images[index], (label if label.ndim else int(label))
