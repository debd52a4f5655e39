"""scikit-learn's handwritten digits: 1,797 8x8 grey images of 0..9, shipped inside scikit-learn."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from tlcore import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore_datasets.split import stratified_split

CLASSES = [str(d) for d in range(10)]
DIGITS_SHAPE = (1797, 65)  # 64 pixels and the label per row, as scikit-learn ships them


def digits_file() -> Path | None:
    """scikit-learn's ``digits.csv.gz``, located without importing scikit-learn; None where it is not found."""
    spec = importlib.util.find_spec("sklearn")  # finds the package's folder without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _read_table(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels (0..16) and labels from the shipped file, read as scikit-learn reads it; None if it is not that file."""
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",")
    except (OSError, ValueError, EOFError):
        return None
    return (table[:, :-1], table[:, -1]) if table.shape == DIGITS_SHAPE else None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Reading the file directly: importing scikit-learn (and SciPy with it) takes 1-2 s on a small machine,
    # longer than the default job's data preparation; its own loader is the fallback.
    path = digits_file()
    table = _read_table(path) if path is not None else None
    if table is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        table = bunch.data, bunch.target
    pixels, targets = table
    # Pixel values are 0..16; scale to 0..255 so they look like any other 8-bit image.
    images = np.rint(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = targets.astype(np.int64)
    images.flags.writeable = False  # cached: callers get copies
    labels.flags.writeable = False
    return images, labels


def load_digits_dataset(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``digits``: a seeded stratified split of the 1,797 images (no download)."""
    images, labels = _digits_arrays()
    train_idx, val_idx = stratified_split(labels, options.val_fraction, options.seed)

    def subset(indices: np.ndarray) -> TensorImageDataset:
        return TensorImageDataset(torch.from_numpy(images[indices]), torch.from_numpy(labels[indices]))

    return DatasetSplits(
        classes=list(CLASSES),
        train=subset(train_idx),
        val=subset(val_idx),
        flip_invariant=False,  # a mirrored digit is not the same digit
        preferred_image_size=64,  # 8x8 sources: 64 px keeps the detail and costs 1/12 of 224 px
        description=f"scikit-learn digits: {len(train_idx)} train and {len(val_idx)} val 8x8 grey images "
        f"({options.val_fraction:g} held out with seed {options.seed})",
        validation=f"holding out {len(val_idx):,} of {len(labels):,} images, seed {options.seed}",
    )
