"""digits: scikit-learn's 8x8 handwritten digits, split by seed."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch
from tlcore_datasets import digits
from tlcore_datasets.digits import load_digits_dataset

from tlcore.dataset import DatasetOptions, TensorImageDataset
from tlcore.errors import ConfigError


def test_sizes_and_values():
    splits = load_digits_dataset("digits", DatasetOptions())
    assert splits.classes == [str(d) for d in range(10)]
    assert splits.flip_invariant is False
    assert isinstance(splits.train, TensorImageDataset)
    assert len(splits.train) + len(splits.val) == 1797
    assert 350 <= len(splits.val) <= 370
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.train.images.dtype == torch.uint8
    assert int(splits.train.images.max()) == 255 and int(splits.train.images.min()) == 0
    assert set(splits.val.labels.tolist()) == set(range(10))
    image, label = splits.val[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)


def test_split_is_deterministic():
    first = load_digits_dataset("digits", DatasetOptions(seed=7, val_fraction=0.3))
    again = load_digits_dataset("digits", DatasetOptions(seed=7, val_fraction=0.3))
    other = load_digits_dataset("digits", DatasetOptions(seed=8, val_fraction=0.3))
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.val.labels, again.val.labels)
    assert torch.equal(first.train.labels, again.train.labels)
    assert not torch.equal(first.val.images, other.val.images)
    assert 530 <= len(first.val) <= 550


def test_returned_tensors_are_independent():
    first = load_digits_dataset("digits", DatasetOptions())
    first.train.images.zero_()
    assert int(load_digits_dataset("digits", DatasetOptions()).train.images.max()) == 255


def test_bad_fraction_and_negative_seed():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_digits_dataset("digits", DatasetOptions(val_fraction=1.0))
    first = load_digits_dataset("digits", DatasetOptions(seed=-5))
    assert torch.equal(first.val.labels, load_digits_dataset("digits", DatasetOptions(seed=-5)).val.labels)


def test_the_shipped_file_is_read_as_scikit_learn_reads_it():
    from sklearn.datasets import load_digits

    expected = load_digits()
    pixels, labels = digits._read_table(digits.digits_file())
    assert np.array_equal(pixels, expected.data) and np.array_equal(labels, expected.target)


def test_loading_does_not_import_scikit_learn():
    code = (
        "import sys; from tlcore_datasets.digits import _digits_arrays; images, labels = _digits_arrays(); "
        "assert images.shape == (1797, 1, 8, 8), images.shape; print('sklearn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong shape"])
def test_a_missing_or_odd_file_falls_back_to_scikit_learn(tmp_path, monkeypatch, damage):
    expected_images, expected_labels = digits._digits_arrays()
    odd = tmp_path / "digits.csv.gz"
    if damage == "truncated":
        odd.write_bytes(gzip.compress(b"0,1,2\n")[:10])
    elif damage == "wrong shape":
        odd.write_bytes(gzip.compress(b"0,1,2\n3,4,5\n"))
    monkeypatch.setattr(digits, "digits_file", lambda: None if damage == "missing" else odd)
    digits._digits_arrays.cache_clear()
    try:
        images, labels = digits._digits_arrays()
    finally:
        digits._digits_arrays.cache_clear()
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
