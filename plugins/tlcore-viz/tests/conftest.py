"""Fixtures for tlcore-viz tests: a host with the tiny backbone and dataset and this plugin, and a finished run."""

from __future__ import annotations

import pytest
import tlcore_viz
import torch

from tlcore.config import build_config
from tlcore.testing import TINY_BACKBONE, TINY_DATASET
from tlcore.train import fit

torch.set_num_threads(1)  # two OpenMP threads thrash when another process shares the cores


@pytest.fixture
def viz_host(tlcore_host, tlcore_register):
    """tlcore's test host (built-ins and the tiny plugin, no installed plugins) with tlcore_viz registered."""
    tlcore_register(tlcore_viz, "viz")
    return tlcore_host


@pytest.fixture
def tiny_run_config(tmp_path):
    """A config for the tiny backbone and dataset (default callbacks, progress off); overrides as keywords."""

    def make(**overrides):
        values = dict(
            backbone=TINY_BACKBONE,
            dataset=TINY_DATASET,
            weights="none",
            epochs=2,
            batch_size=8,
            lr=0.003,
            output=str(tmp_path / "run"),
            callbacks="-progress",
        )
        values.update(overrides)
        return build_config(overrides=values)

    return make


@pytest.fixture
def finished_run(viz_host, tiny_run_config):
    """A two-epoch tiny run with the viz callbacks; returns its RunResult."""
    return fit(tiny_run_config(), viz_host)


@pytest.fixture
def viz_cli(viz_host, tlcore_cli):
    """``run(args, capsys) -> (code, out, err)``: ``tlcore`` in-process with this host's commands."""

    def run(args, capsys):
        result = tlcore_cli(*args)
        return result.code, result.out, result.err

    return run
