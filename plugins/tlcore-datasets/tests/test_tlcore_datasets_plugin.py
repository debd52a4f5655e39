"""The installed plugin, reached through the core's plugin host."""

from __future__ import annotations

import pytest
from tlcore_datasets_testkit import make_cifar10

import tlcore.plugins
from tlcore.dataset import DatasetOptions


@pytest.fixture
def host(monkeypatch):
    monkeypatch.delenv("TLCORE_PLUGINS", raising=False)
    monkeypatch.delenv("TLCORE_DISABLE_PLUGINS", raising=False)
    yield tlcore.plugins.reset_host()
    tlcore.plugins.reset_host()


def test_registered_names(host):
    record = host.records["datasets"]
    assert record.error is None and record.distribution == "tlcore-datasets"
    names = {row.name: row for row in tlcore.plugins.catalog("datasets").listing()}
    for name in ("cifar10", "cifar100", "imagefolder", "digits"):
        assert names[name].plugin == "datasets" and names[name].description


def test_cifar10_through_the_host(host, tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    entry = tlcore.plugins.catalog("datasets").resolve("cifar10")
    splits = entry.factory("cifar10", DatasetOptions(data_dir=tmp_path, download=False))
    assert len(splits.train) == 15 and len(splits.classes) == 10


def test_digits_through_the_host(host):
    entry = tlcore.plugins.catalog("datasets").resolve("digits")
    splits = entry.factory("digits", DatasetOptions(seed=1))
    assert len(splits.train) + len(splits.val) == 1797
