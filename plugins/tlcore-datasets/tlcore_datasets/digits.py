"""scikit-learn's handwritten digits: 1,797 8x8 grey images of 0..9, shipped inside scikit-learn."""

from __future__ import annotations

import functools

import numpy as np
import torch

from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore_datasets.split import stratified_split

CLASSES = [str(d) for d in range(10)]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; scale to 0..255 so they look like any other 8-bit image.
    images = np.rint(bunch.data * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
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
    )
