"""Images sorted into one folder per class.

Layout under ``--data-dir`` (``root``)::

    root/train/<class>/<image>      required (or class folders directly under root, see below)
    root/val/<class>/<image>        optional; "valid" or "validation" also work
    root/test/<class>/<image>       optional: the validation split when there is no val folder, else a test split

Without a validation or test folder, a seeded stratified share
(``val_fraction``) of train is held out. When ``root`` has no ``train`` folder
and no val/test folder at all, its own subfolders are taken as the classes
(torchvision's ``ImageFolder`` layout) and split the same way. Where
validation came from is stated in :attr:`DatasetSplits.validation`, which a
run prints first.

Images are found by extension (case-insensitive), recursively inside each
class folder. Linked folders are followed as torchvision's ``ImageFolder``
follows them, and a folder reached a second time (a link cycle) is not
scanned again. Hidden entries are ignored; everything else that is not used
is reported in :attr:`DatasetSplits.notes`: named pipes, sockets, device
files and broken links (never opened), folders that cannot be listed, files
that are not images by their extension, and folders next to train/val/test.
Items are decoded lazily by :func:`tlcore.images.open_image` as PIL images in
whatever mode the file has; the core converts them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tlcore import DataError, DatasetOptions, DatasetSplits, file_kind, open_image
from tlcore_datasets.split import stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VAL_NAMES = ("val", "valid", "validation")
LAYOUT = "<root>/train/<class>/<image> and optionally <root>/val/<class>/<image>"
LOOKED_FOR = f"looked for {', '.join(IMAGE_EXTENSIONS)} files in its class folders"


class ImageFileDataset(Dataset):
    """``(PIL image, label)`` pairs opened from files on each access.

    ``samples`` are ``(path, label)``: an int class index, or with
    ``multilabel`` a float32 multi-hot tensor ``[C]`` (``tlcore.multilabel``).
    Holds only paths (as strings) and labels, so it pickles cheaply into
    DataLoader workers.
    """

    def __init__(self, samples: list[tuple[str, Any]], classes: list[str], *, multilabel: bool = False):
        self.samples = samples
        self.classes = classes
        self.multilabel = multilabel

    @property
    def targets(self) -> list[int] | torch.Tensor:
        """The label of every item, in order: ints (like torchvision's ImageFolder), or float32 ``[N, C]`` multi-hot."""
        if self.multilabel:
            if not self.samples:
                return torch.zeros(0, len(self.classes), dtype=torch.float32)
            return torch.stack([label for _, label in self.samples]).to(torch.float32)
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        path, label = self.samples[index]
        return open_image(path), label  # DataError naming the file, whatever the decoder raised


def load_imagefolder(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``imagefolder``: class folders under ``options.data_dir``.

    With ``options.multilabel`` the images' labels come from ``labels.csv``
    instead (:mod:`tlcore_datasets.labelled_folder`).
    """
    if options.multilabel:
        from tlcore_datasets.labelled_folder import load_labelled_folder  # it imports the csv reader, which imports us

        return load_labelled_folder(name, options)
    if options.data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir: a folder laid out as {LAYOUT}")
    root = Path(options.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"the data folder {root} does not exist (expected {LAYOUT})")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected {LAYOUT})")

    notes: list[str] = []
    subfolders = {p.name.lower(): p for p in _visible_dirs(root)}
    val_dirs = [subfolders[n] for n in VAL_NAMES if n in subfolders]
    if len(val_dirs) > 1:
        raise DataError(f"{root} has several validation folders ({', '.join(p.name for p in val_dirs)}); keep one")
    train_dir = subfolders.get("train")
    test_dir = subfolders.get("test")
    if train_dir is None:
        if val_dirs or test_dir is not None:
            raise DataError(f"{root} has no train folder (expected {LAYOUT})")
        train_dir = root  # class folders directly under root
    else:
        used = {"train", "test", *VAL_NAMES}
        unused = [p.name for p in _visible_dirs(root) if p.name.lower() not in used]
        if unused:
            notes.append(f"not used: folders {', '.join(unused)} in {root} (only train, val and test are read)")

    # a labels.csv beside the folders lists multi-label images, read only under --task multilabel
    labels_file = root / "labels.csv" if (root / "labels.csv").is_file() else None
    classes = [p.name for p in _visible_dirs(train_dir)]
    if not classes:
        hint = f"; {labels_file} lists multi-label images: train with `tlcore run --task multilabel`" if labels_file else ""
        raise DataError(f"no class folders in {train_dir} (expected {LAYOUT}){hint}")
    if labels_file is not None:
        notes.append(f"not used: {labels_file} (multi-label labels, read under --task multilabel); "
                     "the classes are the class folders")
    skipped: list[str] = []
    other_files: list[str] = []
    train_samples = _scan(train_dir, classes, skipped, other_files)
    if not train_samples:
        raise DataError(f"no images found in {train_dir} ({LOOKED_FOR})")
    counts = np.bincount([label for _, label in train_samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"class folders without images in {train_dir}: {', '.join(empty)}")
    loose = _loose_images(train_dir)
    if loose:
        notes.append(f"not used: {len(loose)} image files directly in {train_dir}, outside any class folder ({_few(loose)})")

    val_dir = val_dirs[0] if val_dirs else test_dir  # test/ validates when there is no val/
    if val_dir is test_dir:
        test_dir = None
    if val_dir is not None:
        val_samples = _scan(_same_classes(train_dir, val_dir, classes), classes, skipped, other_files)
        if not val_samples:
            raise DataError(f"no images found in {val_dir} ({LOOKED_FOR})")
        source = f"{train_dir} and {val_dir}"
        validation = f"{val_dir.name}/ ({len(val_samples):,} images)" + (
            "; there is no val/ folder" if val_dir.name.lower() == "test" else ""
        )
    else:
        labels = np.array([label for _, label in train_samples])
        train_idx, val_idx = stratified_split(labels, options.val_fraction, options.seed)
        if len(val_idx) == 0:
            raise DataError(f"too few images in {train_dir} to hold out a validation split; add a val folder ({LAYOUT})")
        validation = f"holding out {len(val_idx):,} of {len(labels):,} train images, seed {options.seed}"
        val_samples = [train_samples[i] for i in val_idx]
        train_samples = [train_samples[i] for i in train_idx]
        source = f"{train_dir}, {options.val_fraction:g} held out with seed {options.seed}"

    test = None
    if test_dir is not None:
        test_classes = [p.name for p in _visible_dirs(test_dir)]
        if test_classes == classes:
            test = ImageFileDataset(_scan(test_dir, classes, skipped, other_files), classes)
            notes.append(f"not used in training or validation: {test_dir}/ ({len(test):,} images), a test split")
        else:
            notes.append(f"not used: {test_dir}, whose class folders differ from those of {train_dir}")
    if skipped:
        notes.insert(0, f"skipped {len(skipped)} entries that are not readable files: {_few(skipped)}")
    if other_files:
        notes.append(f"not used: {len(other_files)} files that are not images by their extension ({_few(other_files)})")

    return DatasetSplits(
        classes=classes,
        train=ImageFileDataset(train_samples, classes),
        val=ImageFileDataset(val_samples, classes),
        flip_invariant=True,
        description=f"image folder: {len(train_samples)} train and {len(val_samples)} val images in "
        f"{len(classes)} classes from {source}",
        validation=validation,
        notes=notes,
        test=test,
    )


def _same_classes(train_dir: Path, other: Path, classes: list[str]) -> Path:
    """``other`` when its class folders are those of ``train_dir``; DataError naming the differences otherwise."""
    other_classes = [p.name for p in _visible_dirs(other)]
    if other_classes != classes:
        only_train = sorted(set(classes) - set(other_classes))
        only_other = sorted(set(other_classes) - set(classes))
        raise DataError(
            f"the class folders of {train_dir} and {other} differ: "
            f"only in train: {', '.join(only_train) or 'none'}; only in {other.name}: {', '.join(only_other) or 'none'}"
        )
    return other


def _few(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, and how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _visible_dirs(folder: Path) -> list[Path]:
    """Subfolders (or links to folders) not starting with a dot, sorted by name; DataError when unreadable."""
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as error:
        raise DataError(f"cannot list the folder {folder}: {error.strerror or error}") from error


def _loose_images(folder: Path) -> list[str]:
    """Image files directly in ``folder`` (not in a class folder)."""
    return sorted(
        str(p)
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS) and p.is_file()
    )


def _scan(split_dir: Path, classes: list[str], skipped: list[str], other_files: list[str]) -> list[tuple[str, int]]:
    """Image files of every class folder (recursively, in sorted order) with their label.

    Files come before subfolders, both sorted by name, as ``os.walk`` lists
    them. Links to folders are followed; a folder already scanned for this
    class (a link cycle, or a second link) is not scanned again. Entries that
    are neither folders nor regular files are never opened: they are named in
    ``skipped`` with what they are; files without an image extension go to
    ``other_files``.
    """
    samples: list[tuple[str, int]] = []
    for label, class_name in enumerate(classes):
        _walk(str(split_dir / class_name), label, set(), samples, skipped, other_files)
    return samples


def _walk(
    folder: str,
    label: int,
    visited: set[tuple[int, int]],
    samples: list[tuple[str, int]],
    skipped: list[str],
    other_files: list[str],
) -> None:
    """One folder of :func:`_scan`, then its subfolders."""
    try:
        info = os.stat(folder)
        with os.scandir(folder) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        skipped.append(f"{folder} (cannot be listed: {' '.join(str(error.strerror or error).split())})")
        return
    key = (info.st_dev, info.st_ino)
    if key in visited:
        skipped.append(f"{folder} (a link to a folder already scanned)")
        return
    visited.add(key)
    folders = []
    for entry in entries:
        try:
            if entry.is_dir():  # follows links, as torchvision's ImageFolder does
                folders.append(entry.path)
                continue
            regular = entry.is_file()  # follows links; from the folder listing, without opening the file
        except OSError:
            regular = False
        if not regular:
            try:
                kind = file_kind(os.stat(entry.path).st_mode)
            except OSError:
                kind = "a broken link"
            skipped.append(f"{entry.path} ({kind})")
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            samples.append((entry.path, label))
        else:
            other_files.append(entry.path)
    for path in folders:
        _walk(path, label, visited, samples, skipped, other_files)
