"""CIFAR files are held to the format's sizes before anything is allocated: a tiny file cannot take gigabytes.

Each hostile file here is a few hundred bytes that, read naively, declares
arrays of gigabytes (or crashes numpy outright). Peak allocation is measured
with tracemalloc, which numpy reports its buffers to.
"""

from __future__ import annotations

import pickle
import struct
import tracemalloc

import numpy as np
import pytest
from tlcore_datasets import cifar
from tlcore_datasets.cifar import load_cifar10
from tlcore_datasets.safepickle import load_restricted
from tlcore_datasets_testkit import make_cifar10

from tlcore.dataset import DatasetOptions
from tlcore.errors import DataError

RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


class Declared:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, dtype)``: an array of ``shape``, allocated, no data."""

    def __init__(self, shape, dtype="b"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return (RECONSTRUCT, (np.ndarray, self.shape, self.dtype))


class DeclaredWithState(Declared):
    """The same, then a BUILD step whose state declares ``shape`` again with two bytes of data."""

    def __reduce__(self):
        return (RECONSTRUCT, (np.ndarray, (0,), "b"), (1, self.shape, np.dtype(self.dtype), False, b"xx"))


def hostile_batch(tmp_path, data, labels, name="data_batch_1"):
    """A CIFAR-10 folder whose first batch is replaced by a pickle of ``data`` and ``labels``."""
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    path = folder / name
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return path


def peak_bytes(action) -> tuple[int, BaseException | None]:
    """Run ``action``; the peak traced allocation during it, and what it raised."""
    tracemalloc.start()
    raised = None
    try:
        action()
    except BaseException as error:  # noqa: BLE001 - returned to the test
        raised = error
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize(
    "data, labels",
    [
        (Declared((1_000_000, 3072)), Declared((1_000_000,), "<i8")),  # passes every shape check, 3 GB
        (Declared((4 * 10**9,)), [0]),  # 4 GB, refused later by the shape check
        (DeclaredWithState((4 * 10**9,)), [0]),  # the size declared in the BUILD state
    ],
    ids=["batch-shaped", "flat", "in-state"],
)
def test_a_small_file_declaring_gigabytes_allocates_nothing(tmp_path, data, labels):
    path = hostile_batch(tmp_path, data, labels)
    assert path.stat().st_size < 400
    peak, raised = peak_bytes(lambda: load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False)))
    assert isinstance(raised, DataError), raised
    assert str(path) in str(raised) and "holds only" in str(raised)
    assert peak < 16 << 20, f"{peak:,} bytes allocated for a {path.stat().st_size}-byte file"


def test_an_object_array_of_a_huge_declared_shape_is_refused_not_a_crash(tmp_path):
    # numpy's own __setstate__ allocates this and crashes the process (segmentation fault)
    path = hostile_batch(tmp_path, DeclaredWithState((4 * 10**8,), "O"), [0])
    with pytest.raises(DataError, match="holding Python objects"):
        load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False))
    assert path.exists()


def test_a_declared_length_beyond_the_file_is_truncation_not_allocation(tmp_path):
    # BINBYTES8 (protocol 4) declaring 2**40 bytes, followed by 4
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abcd")
    peak, raised = peak_bytes(lambda: load_restricted(path))
    assert isinstance(raised, pickle.UnpicklingError), raised
    assert peak < 1 << 20


def test_a_batch_with_more_images_than_the_format_holds_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "SPECS", {**cifar.SPECS})
    make_cifar10(tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    count = 10_001
    data = np.zeros((count, 3072), np.uint8)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0] * count}, protocol=2))
    with pytest.raises(DataError, match="10001 images, but a CIFAR-10 file of this kind holds at most 10000"):
        load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False))


def test_a_file_larger_than_the_format_allows_is_refused_before_reading(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(meta.read_bytes() + b"\0" * (cifar.META_FILE_BYTES + 1))
    with pytest.raises(DataError, match="more than the format's"):
        load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False))


def test_official_layout_still_loads_with_bounds(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_cifar10("cifar10", DatasetOptions(data_dir=tmp_path, download=False))
    assert type(splits.train.images).__name__ == "Tensor" and len(splits.train) == 15
