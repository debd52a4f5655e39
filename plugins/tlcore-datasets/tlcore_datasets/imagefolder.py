"""Images sorted into one folder per class.

Layout under ``--data-dir`` (``root``)::

    root/train/<class>/<image>      required (or class folders directly under root, see below)
    root/val/<class>/<image>        optional; "valid" or "validation" also work

Without a validation folder, a seeded stratified share (``val_fraction``) of
train is held out. When ``root`` has no ``train`` folder and no val/test
folder at all, its own subfolders are taken as the classes (torchvision's
``ImageFolder`` layout) and split the same way.

Images are found by extension (case-insensitive), recursively inside each
class folder; other files and hidden entries are ignored. Items are opened
lazily as PIL images in whatever mode the file has; the core converts them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tlcore.dataset import DatasetOptions, DatasetSplits
from tlcore.errors import DataError
from tlcore_datasets.split import stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VAL_NAMES = ("val", "valid", "validation")
LAYOUT = "<root>/train/<class>/<image> and optionally <root>/val/<class>/<image>"
LOOKED_FOR = f"looked for {', '.join(IMAGE_EXTENSIONS)} files in its class folders"


class ImageFileDataset(Dataset):
    """``(PIL image, label)`` pairs opened from files on each access.

    Holds only paths (as strings) and int labels, so it pickles cheaply into
    DataLoader workers.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]):
        self.samples = samples
        self.classes = classes

    @property
    def targets(self) -> list[int]:
        """The label of every item, in order (like torchvision's ImageFolder)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()  # read now so the file is closed when the with block ends
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot read image {path}: {' '.join(str(error).split())}") from error
        return image, label


def load_imagefolder(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``imagefolder``: class folders under ``options.data_dir``."""
    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: a folder laid out as {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"the data folder {root} does not exist (expected {LAYOUT})")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected {LAYOUT})")

    subfolders = {p.name.lower(): p for p in _visible_dirs(root)}
    val_dirs = [subfolders[n] for n in VAL_NAMES if n in subfolders]
    if len(val_dirs) > 1:
        raise DataError(f"{root} has several validation folders ({', '.join(p.name for p in val_dirs)}); keep one")
    train_dir = subfolders.get("train")
    if train_dir is None:
        if val_dirs or "test" in subfolders:
            raise DataError(f"{root} has no train folder (expected {LAYOUT})")
        train_dir = root  # class folders directly under root

    classes = [p.name for p in _visible_dirs(train_dir)]
    if not classes:
        raise DataError(f"no class folders in {train_dir} (expected {LAYOUT})")
    train_samples = _scan(train_dir, classes)
    if not train_samples:
        raise DataError(f"no images found in {train_dir} ({LOOKED_FOR})")
    counts = np.bincount([label for _, label in train_samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"class folders without images in {train_dir}: {', '.join(empty)}")

    if val_dirs:
        val_dir = val_dirs[0]
        val_classes = [p.name for p in _visible_dirs(val_dir)]
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise DataError(
                f"the class folders of {train_dir} and {val_dir} differ: "
                f"only in train: {', '.join(only_train) or 'none'}; only in {val_dir.name}: {', '.join(only_val) or 'none'}"
            )
        val_samples = _scan(val_dir, classes)
        if not val_samples:
            raise DataError(f"no images found in {val_dir} ({LOOKED_FOR})")
        source = f"{train_dir} and {val_dir}"
    else:
        labels = np.array([label for _, label in train_samples])
        train_idx, val_idx = stratified_split(labels, options.val_fraction, options.seed)
        if len(val_idx) == 0:
            raise DataError(f"too few images in {train_dir} to hold out a validation split; add a val folder ({LAYOUT})")
        val_samples = [train_samples[i] for i in val_idx]
        train_samples = [train_samples[i] for i in train_idx]
        source = f"{train_dir}, {options.val_fraction:g} held out with seed {options.seed}"

    return DatasetSplits(
        classes=classes,
        train=ImageFileDataset(train_samples, classes),
        val=ImageFileDataset(val_samples, classes),
        flip_invariant=True,
        description=f"image folder: {len(train_samples)} train and {len(val_samples)} val images in "
        f"{len(classes)} classes from {source}",
    )


def _visible_dirs(folder: Path) -> list[Path]:
    """Subfolders not starting with a dot, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _scan(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Image files of every class folder (recursively, in sorted order) with their label."""
    samples = []
    for label, class_name in enumerate(classes):
        class_dir = split_dir / class_name
        for current, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(current, filename), label))
    return samples
