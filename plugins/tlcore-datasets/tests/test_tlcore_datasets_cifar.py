"""CIFAR-10/100: files in the official format, hostile and broken files, missing files and downloads."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tlcore_datasets import cifar
from tlcore_datasets.cifar import load_cifar10, load_cifar100
from tlcore_datasets_testkit import make_cifar10, make_cifar100, py2_dump

from tlcore.dataset import DatasetOptions, TensorImageDataset
from tlcore.errors import DataError


def options(data_dir, download=False):
    return DatasetOptions(data_dir=data_dir, download=download)


def expected_images(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32))


def test_cifar10_python2_files(tmp_path):
    written = make_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_cifar10("cifar10", options(tmp_path))
    assert splits.classes == written["classes"]
    assert splits.flip_invariant is True
    assert isinstance(splits.train, TensorImageDataset) and isinstance(splits.val, TensorImageDataset)
    assert len(splits.train) == 15 and len(splits.val) == 4
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape == (15, 3, 32, 32)
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(splits.train.images, expected_images(rows))
    assert splits.train.labels.tolist() == labels
    assert torch.equal(splits.val.images, expected_images(written["test_batch"][0]))
    image, label = splits.val[1]
    assert image.shape == (3, 32, 32) and label == written["test_batch"][1][1]
    # channel planes: the first 1024 bytes of a row are red, row-major
    assert splits.val.images[0, 0, 0, 5].item() == written["test_batch"][0][0, 5]
    assert splits.val.images[0, 2, 1, 0].item() == written["test_batch"][0][0, 2048 + 32]


def test_cifar10_data_dir_is_the_extracted_folder(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_cifar10("cifar10", options(tmp_path / "cifar-10-batches-py"))
    assert len(splits.train) == 15


def test_cifar10_str_keys(tmp_path):
    written = make_cifar10(tmp_path / "cifar-10-batches-py", str_keys=True)
    splits = load_cifar10("cifar10", options(tmp_path))
    assert splits.classes == written["classes"]
    assert torch.equal(splits.val.images, expected_images(written["test_batch"][0]))


def test_cifar10_python3_protocol2_repickle(tmp_path):
    # Python 3 writes bytes at protocol 2 through _codecs.encode(..., "latin1"); that one global is allowed.
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder, str_keys=True)
    for file in folder.iterdir():
        file.write_bytes(pickle.dumps(pickle.loads(file.read_bytes()), protocol=2))
    splits = load_cifar10("cifar10", options(tmp_path))
    assert len(splits.val) == 4


def test_cifar100_python2_files(tmp_path):
    written = make_cifar100(tmp_path / "cifar-100-python")
    splits = load_cifar100("cifar100", options(tmp_path))
    assert len(splits.classes) == 100 and splits.classes[:2] == ["fine00", "fine01"]
    assert splits.flip_invariant is True
    assert len(splits.train) == 6 and len(splits.val) == 4
    assert splits.train.labels.tolist() == written["train"][1]
    assert torch.equal(splits.train.images, expected_images(written["train"][0]))


def test_cifar100_str_keys_direct_folder(tmp_path):
    make_cifar100(tmp_path / "cifar-100-python", str_keys=True)
    splits = load_cifar100("cifar100", options(tmp_path / "cifar-100-python"))
    assert len(splits.val) == 4


class WritesMarker:
    """Unpickling this calls builtins.open(marker, "w"), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsCommand:
    """Unpickling this calls os.system("touch marker")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("payload", [WritesMarker, RunsCommand])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    marker = tmp_path / "marker"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": payload(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2") as info:
        load_cifar10("cifar10", options(tmp_path))
    assert "refusing" in str(info.value)
    assert not marker.exists()
    # the plain pickle.load that the loader avoids would indeed have run it
    if payload is WritesMarker:
        pickle.loads((folder / "data_batch_2").read_bytes())[b"data"].close()
        assert marker.exists()


def test_truncated_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    content = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="data_batch_3.*truncated"):
        load_cifar10("cifar10", options(tmp_path))


def test_garbage_file(tmp_path):
    folder = tmp_path / "cifar-100-python"
    make_cifar100(folder)
    (folder / "test").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(DataError, match=r"cifar-100-python[/\\]test"):
        load_cifar100("cifar100", options(tmp_path))


@pytest.mark.parametrize(
    "content, message",
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"0\.\.9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "integers"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_malformed_batch(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    py2_dump(content, folder / "data_batch_1")
    with pytest.raises(DataError, match=message) as info:
        load_cifar10("cifar10", options(tmp_path))
    assert "data_batch_1" in str(info.value)


def test_malformed_meta(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    py2_dump({b"label_names": [b"cat", b"dog"]}, folder / "batches.meta")
    with pytest.raises(DataError, match="batches.meta.*10 distinct class names"):
        load_cifar10("cifar10", options(tmp_path))


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10("cifar10", options(tmp_path, download=False))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "downloading is turned off" in message
    assert "cifar-10-python.tar.gz" in message


def test_partial_folder_names_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing in .*: data_batch_4"):
        load_cifar10("cifar10", options(tmp_path, download=False))


def test_missing_download_unreachable(tmp_path, monkeypatch):
    # A closed local port: the download fails at once, as it does on a machine without network.
    monkeypatch.setitem(
        cifar.SPECS, "cifar100", dataclasses.replace(cifar.SPECS["cifar100"], url="http://127.0.0.1:9/x.tgz")
    )
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_cifar100("cifar100", options(tmp_path, download=True))
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert f"not found under {tmp_path}" in message and "could not be downloaded (" in message
    assert "download cifar-100-python.tar.gz from http://127.0.0.1:9/x.tgz" in message
    assert not list(tmp_path.glob("*.part"))


def test_default_data_dir_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, destination, timeout=30.0):
        raise OSError("no network here")

    monkeypatch.setattr(cifar, "fetch", offline)
    assert cifar.default_data_dir() == tmp_path / "cache" / "tlcore" / "data"
    with pytest.raises(DataError, match="no network here") as info:
        load_cifar10("cifar10", DatasetOptions(data_dir=None, download=True))
    assert str(tmp_path / "cache" / "tlcore" / "data") in str(info.value)


def make_archive(source_root: Path, folder: str, archive: Path, extra: tarfile.TarInfo | None = None) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_root / folder, arcname=folder)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))


def serve_file(monkeypatch, archive: Path, md5: str | None = None):
    """Replace the network fetch with a copy of ``archive`` and the expected md5 with its own."""
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(spec, md5=md5 or cifar.file_md5(archive)))
    calls = []

    def fake_fetch(url, destination, timeout=30.0):
        calls.append(url)
        destination.write_bytes(archive.read_bytes())

    monkeypatch.setattr(cifar, "fetch", fake_fetch)
    return calls


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "served.tar.gz"
    make_archive(tmp_path / "src", "cifar-10-batches-py", archive)
    calls = serve_file(monkeypatch, archive)
    data = tmp_path / "data"
    splits = load_cifar10("cifar10", options(data, download=True))
    assert calls == [cifar.SPECS["cifar10"].url]
    assert len(splits.train) == 15
    assert (data / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (data / "cifar-10-python.tar.gz").exists()
    load_cifar10("cifar10", options(data, download=True))  # second time: no download
    assert len(calls) == 1


def test_download_md5_mismatch(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "served.tar.gz"
    make_archive(tmp_path / "src", "cifar-10-batches-py", archive)
    serve_file(monkeypatch, archive, md5="0" * 32)
    with pytest.raises(DataError, match="md5"):
        load_cifar10("cifar10", options(tmp_path / "data", download=True))
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    assert not list((tmp_path / "data").iterdir())


def test_download_refuses_escaping_member(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "served.tar.gz"
    evil = tarfile.TarInfo("../escaped.txt")
    evil.size = 3
    make_archive(tmp_path / "src", "cifar-10-batches-py", archive, extra=evil)
    serve_file(monkeypatch, archive)
    with pytest.raises(DataError, match="outside"):
        load_cifar10("cifar10", options(tmp_path / "data", download=True))
    assert not (tmp_path / "escaped.txt").exists()


def test_local_archive_is_extracted_without_download(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    data = tmp_path / "data"
    data.mkdir()
    make_archive(tmp_path / "src", "cifar-10-batches-py", data / "cifar-10-python.tar.gz")
    calls = serve_file(monkeypatch, data / "cifar-10-python.tar.gz")
    splits = load_cifar10("cifar10", options(data, download=False))
    assert len(splits.val) == 4 and calls == []
