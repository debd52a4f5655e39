"""CIFAR-10 and CIFAR-100 from the official "python version" files.

The files are read with :mod:`tlcore_datasets.safepickle`, not torchvision's
dataset classes: those check the md5 of every official file (so they reject
files made by tests or re-pickled by Python 3) and use a plain ``pickle.load``.

Where the files live (``root`` is ``--data-dir``, or :func:`default_data_dir`):

- ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
- ``root/cifar-100-python/{train,test,meta}``
- or ``root`` is that extracted folder itself.

Missing files are downloaded (``options.download``) as the official archive,
checked against its published md5 and extracted into ``root``; an archive
already lying in ``root`` is extracted without downloading.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcore import DataError, DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore_datasets.safepickle import ForbiddenGlobal, load_restricted

DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not for the whole transfer
IMAGE_BYTES = 3 * 32 * 32
IMAGES_PER_TEST_FILE = 10_000  # both CIFARs
# Per image a batch file holds its 3,072 bytes, a label and (official files) a file name of some 40 bytes.
FILE_BYTES_PER_IMAGE = IMAGE_BYTES + 256
META_FILE_BYTES = 1 << 20  # a few hundred class names


@dataclass(frozen=True)
class CifarSpec:
    """Everything that differs between CIFAR-10 and CIFAR-100."""

    name: str  # registered dataset name
    title: str  # for messages
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    images_per_train_file: int  # what the format holds per file: no file of it may have more
    label_key: str  # key of the labels in a batch file
    names_key: str  # key of the class names in the meta file
    num_classes: int
    archive: str
    url: str
    md5: str

    @property
    def required(self) -> tuple[str, ...]:
        """Every file that must be present in the extracted folder."""
        return (*self.train_files, *self.test_files, self.meta_file)


SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        images_per_train_file=10_000,
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        images_per_train_file=50_000,
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def default_data_dir() -> Path:
    """Where datasets live when the user gave no ``--data-dir``: ``$XDG_CACHE_HOME/tlcore/data``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``, so usually ``~/.cache/tlcore/data``.
    """
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "tlcore" / "data"


def load_cifar10(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``cifar10``: 50,000 training and 10,000 test images in 10 classes."""
    return load_cifar(SPECS["cifar10"], options)


def load_cifar100(name: str, options: DatasetOptions) -> DatasetSplits:
    """Dataset factory for ``cifar100``: 50,000 training and 10,000 test images in 100 (fine) classes."""
    return load_cifar(SPECS["cifar100"], options)


def load_cifar(spec: CifarSpec, options: DatasetOptions) -> DatasetSplits:
    """Find (or fetch) the files of ``spec`` and return train, and val and test (both the official test split)."""
    root = Path(options.data_dir).expanduser() if options.data_dir is not None else default_data_dir()
    folder = find_folder(spec, root)
    if folder is None:
        folder = obtain(spec, root, options.download)
    classes = read_class_names(folder / spec.meta_file, spec)
    train = read_split([folder / f for f in spec.train_files], spec, len(classes), spec.images_per_train_file)
    val = read_split([folder / f for f in spec.test_files], spec, len(classes), IMAGES_PER_TEST_FILE)
    return DatasetSplits(
        classes=classes,
        train=train,
        val=val,
        flip_invariant=True,
        description=f"{spec.title}: {len(train)} train and {len(val)} test images from {folder}",
        validation=f"the official test split ({', '.join(spec.test_files)}, {len(val):,} images)",
        test=val,  # the same images: `tlcore eval --split test` scores the official test split by its name
    )


# -- locating and downloading ----------------------------------------------------


def find_folder(spec: CifarSpec, root: Path) -> Path | None:
    """The folder holding all of ``spec``'s files: ``root/<folder>`` or ``root`` itself; None if neither."""
    for candidate in (root / spec.folder, root):
        if all((candidate / f).is_file() for f in spec.required):
            return candidate
    return None


def obtain(spec: CifarSpec, root: Path, download: bool) -> Path:
    """Extract a local archive or download one; return the folder, or raise a one-line DataError."""
    # data_dir may name the extracted folder itself; the archive then belongs in its parent.
    target = root.parent if root.name == spec.folder else root
    archive = target / spec.archive
    try:
        local_ok = archive.is_file() and file_md5(archive) == spec.md5
        if local_ok:
            extract(archive, target)
        elif download:
            print(f"tlcore-datasets: downloading {spec.url} into {target}", file=sys.stderr)
            target.mkdir(parents=True, exist_ok=True)
            fetch_verified(spec.url, archive, spec.md5)
            extract(archive, target)
            archive.unlink()  # the extracted files are what is read; do not keep 160 MB twice
        elif archive.is_file():
            raise _Unavailable(f"{archive} does not have the official md5 and downloading is turned off")
        else:
            raise _Unavailable("downloading is turned off")
    except Exception as error:  # any failure to fetch becomes the one-line message below
        raise DataError(_missing_message(spec, root, target, _reason(error))) from error
    folder = find_folder(spec, target)
    if folder is None:
        raise DataError(_missing_message(spec, root, target, f"{spec.archive} did not contain them"))
    return folder


class _Unavailable(Exception):
    """Why the files could not be had, when it is not an exception from below."""


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        text = str(error.reason)
    elif isinstance(error, _Unavailable):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())  # one line


def _missing_message(spec: CifarSpec, root: Path, target: Path, reason: str) -> str:
    folder = root if root.name == spec.folder else root / spec.folder
    missing = ""
    if folder.is_dir():
        absent = [f for f in spec.required if not (folder / f).is_file()]
        missing = f" (missing in {folder}: {', '.join(absent)})"
    return (
        f"the {spec.title} files ({spec.folder}/{', '.join(_short(spec))}) were not found under {root}{missing} "
        f"and could not be downloaded ({reason}); download {spec.archive} from {spec.url} "
        f"and extract it into {target}, or pass --data-dir with the folder that holds {spec.folder}"
    )


def _short(spec: CifarSpec) -> list[str]:
    train = spec.train_files
    names = [f"{train[0][:-1]}1..{len(train)}"] if len(train) > 1 else list(train)
    return [*names, *spec.test_files, spec.meta_file]


def fetch(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``destination`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def fetch_verified(url: str, destination: Path, md5: str) -> None:
    """Download to a ``.part`` file, check its md5, then move it into place."""
    partial = destination.with_name(destination.name + ".part")
    try:
        fetch(url, partial)
        digest = file_md5(partial)
        if digest != md5:
            raise _Unavailable(f"the downloaded {destination.name} has md5 {digest}, expected {md5}")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract(archive: Path, destination: Path) -> None:
    """Extract a tar archive into ``destination``, refusing members that would land outside it.

    The CIFAR archives hold only folders and regular files, so links and
    devices are refused outright; ``filter="data"`` is used where Python has it.
    """
    base = destination.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            if not (member.isfile() or member.isdir()):
                raise _Unavailable(f"{archive.name} holds {member.name!r}, which is not a plain file or folder")
            if not (base / member.name).resolve().is_relative_to(base):
                raise _Unavailable(f"{archive.name} holds {member.name!r}, which would be extracted outside {base}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(base, members=members, filter="data")
        else:  # Python without extraction filters; members were checked above
            tar.extractall(base, members=members)


# -- reading ----------------------------------------------------------------------


def read_pickle(path: Path, max_bytes: int) -> dict:
    """Load one CIFAR pickle with the restricted reader; any failure is a DataError naming ``path``.

    A file larger than ``max_bytes`` (what the format can take) is refused
    before it is read; no array in it may declare more bytes than the file has.
    """
    try:
        content = load_restricted(path, max_bytes)
    except ForbiddenGlobal as error:
        raise DataError(
            f"refusing to load {path}: it asks to call {error.qualname}, which no CIFAR file needs "
            "(a pickle can run code while it loads); replace the file with one from the official archive"
        ) from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    except Exception as error:  # truncated or corrupt: pickle raises many different types
        raise DataError(
            f"{path} is not a readable CIFAR file ({type(error).__name__}: {' '.join(str(error).split())}); "
            "it may be truncated or corrupt: replace it with the file from the official archive"
        ) from error
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a CIFAR file: it holds a {type(content).__name__}, not a dict")
    return content


def _entry(content: dict, key: str, path: Path) -> Any:
    # Official files (Python 2, read with encoding="bytes") have bytes keys; Python 3 re-pickles have str keys.
    for candidate in (key.encode(), key):
        if candidate in content:
            return content[candidate]
    keys = ", ".join(sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in content))
    raise DataError(f"{path} is not a CIFAR file of this kind: it has no {key!r} entry (it has: {keys})")


def read_class_names(path: Path, spec: CifarSpec) -> list[str]:
    """Class names from the meta file, checked to be ``spec.num_classes`` distinct strings."""
    names = _entry(read_pickle(path, META_FILE_BYTES), spec.names_key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: {spec.names_key!r} must be a list of strings")
    classes = [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]
    if len(classes) != spec.num_classes or len(set(classes)) != len(classes):
        raise DataError(f"{path}: expected {spec.num_classes} distinct class names, got {len(classes)}")
    return classes


def read_batch(path: Path, spec: CifarSpec, num_classes: int, max_images: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: ``data`` (N, 3072) uint8 and labels (N,) in ``[0, num_classes)``, validated.

    ``max_images`` is what the format puts in such a file (10,000 per CIFAR-10
    batch); more is a DataError, and so is a file too large to hold at most that.
    """
    content = read_pickle(path, max_images * FILE_BYTES_PER_IMAGE + META_FILE_BYTES)
    data = _entry(content, "data", path)
    labels_value = _entry(content, spec.label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {IMAGE_BYTES}), got {got}")
    try:
        labels = np.asarray(labels_value)
    except Exception as error:
        raise DataError(f"{path}: {spec.label_key!r} is not a list of integers ({error})") from error
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataError(f"{path}: {spec.label_key!r} must be a list of integers, got {labels.dtype} {labels.shape}")
    if len(data) > max_images:
        raise DataError(f"{path}: {len(data)} images, but a {spec.title} file of this kind holds at most {max_images}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    return data, labels.astype(np.int64)


def read_split(paths: list[Path], spec: CifarSpec, num_classes: int, max_images: int) -> TensorImageDataset:
    """Concatenate batch files (each of at most ``max_images``) into one dataset of (N, 3, 32, 32) uint8 images."""
    batches = [read_batch(path, spec, num_classes, max_images) for path in paths]
    data = np.concatenate([b[0] for b in batches])  # a fresh, writable copy
    labels = np.concatenate([b[1] for b in batches])
    if len(data) == 0:
        raise DataError(f"no images in {', '.join(str(p) for p in paths)}")
    # Rows are 1024 red, 1024 green, 1024 blue bytes, each a 32x32 row-major plane.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    return TensorImageDataset(images, torch.from_numpy(labels))
