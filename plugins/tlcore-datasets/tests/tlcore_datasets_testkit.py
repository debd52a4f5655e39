"""Helpers for the tlcore-datasets tests: CIFAR files in the official on-disk format, image trees.

The official CIFAR files were pickled by Python 2 (protocol 2): every ``str``
(dict keys, class names, the array's raw data, the dtype's arguments) is a
``BINSTRING`` opcode and numpy's reconstruct function is the global
``numpy.core.multiarray._reconstruct``. :class:`Py2Pickler` writes exactly that
from Python 3, so the tests read files shaped like the real ones.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us override how str and bytes are written
    """Protocol 2 pickles as Python 2 wrote them: str and bytes both as Python 2 ``str`` (BINSTRING)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            module, qualname = "numpy.core.multiarray", "_reconstruct"
        else:
            module, qualname = obj.__module__, name or obj.__qualname__
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)


def py2_dump(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` the way Python 2's cPickle.dump(obj, f, 2) would."""
    with open(path, "wb") as file:
        Py2Pickler(file).dump(obj)


def cifar_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``n`` random images as (n, 3072) uint8 rows and labels cycling through the classes."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(seed + i) % num_classes for i in range(n)]
    return data, labels


def make_cifar10(folder: Path, per_batch: int = 3, test: int = 4, str_keys: bool = False) -> dict:
    """Write a tiny cifar-10-batches-py folder; returns the arrays written, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    key = str if str_keys else (lambda k: k.encode())
    dump = (lambda obj, path: path.write_bytes(pickle.dumps(obj))) if str_keys else py2_dump
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    written = {}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, file in enumerate(files):
        data, labels = cifar_batch(test if file == "test_batch" else per_batch, 10, seed)
        content = {
            key("batch_label"): key(f"batch {seed}"),
            key("labels"): labels,
            key("data"): data,
            key("filenames"): [key(f"img_{seed}_{i}.png") for i in range(len(labels))],
        }
        dump(content, folder / file)
        written[file] = (data, labels)
    meta = {key("label_names"): [key(n) for n in names], key("num_cases_per_batch"): per_batch, key("num_vis"): 3072}
    dump(meta, folder / "batches.meta")
    written["classes"] = names
    return written


def make_cifar100(folder: Path, train: int = 6, test: int = 4, str_keys: bool = False) -> dict:
    """Write a tiny cifar-100-python folder; returns the arrays written, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    key = str if str_keys else (lambda k: k.encode())
    dump = (lambda obj, path: path.write_bytes(pickle.dumps(obj))) if str_keys else py2_dump
    fine = [f"fine{i:02d}" for i in range(100)]
    written = {}
    for seed, (file, n) in enumerate([("train", train), ("test", test)]):
        data, labels = cifar_batch(n, 100, seed + 95)  # labels wrap past 99 to exercise the full range
        content = {
            key("filenames"): [key(f"x{i}.png") for i in range(n)],
            key("batch_label"): key(file),
            key("fine_labels"): labels,
            key("coarse_labels"): [label // 5 for label in labels],
            key("data"): data,
        }
        dump(content, folder / file)
        written[file] = (data, labels)
    meta = {key("fine_label_names"): [key(n) for n in fine], key("coarse_label_names"): [key(f"c{i}") for i in range(20)]}
    dump(meta, folder / "meta")
    written["classes"] = fine
    return written


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (6, 5), value: int = 0) -> None:
    """Write a small solid image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (value, 10, 20), "L": value, "RGBA": (value, 10, 20, 128), "P": value}[mode]
    Image.new(mode, size, colour).save(path)
