"""Shared fixtures: a fresh plugin host with the tiny test backbone and dataset."""

from __future__ import annotations

import pytest
import torch

from tlcore import plugins
from tlcore.config import build_config
from tlcore.testing import TINY_BACKBONE, TINY_DATASET

# Two OpenMP threads thrash when another process shares the 2 cores; tests use one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(plugins.ENV_SELECT, raising=False)
    monkeypatch.delenv(plugins.ENV_DISABLE, raising=False)


@pytest.fixture
def host(tlcore_host):
    """The shipped fixture (tlcore.pytest_plugin): built-ins and the tiny plugin, no installed plugins."""
    return tlcore_host


@pytest.fixture
def tiny_config(tmp_path):
    """Build a config for the tiny backbone and dataset, writing to a fresh folder; overrides as keywords."""

    def make(**overrides):
        values = dict(
            backbone=TINY_BACKBONE,
            dataset=TINY_DATASET,
            weights="none",
            epochs=2,
            batch_size=8,
            lr=0.01,
            output=str(tmp_path / "run"),
        )
        values.update(overrides)
        return build_config(overrides=values)

    return make
