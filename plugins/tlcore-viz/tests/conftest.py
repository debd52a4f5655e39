"""Fixtures for tlcore-viz tests: a host with the tiny backbone and dataset and this plugin, and a finished run."""

from __future__ import annotations

import pytest
import tlcore_viz
import torch

from tlcore import cli, plugins
from tlcore.config import build_config
from tlcore.testing import TINY_BACKBONE, TINY_DATASET, TinyPlugin
from tlcore.train import fit

torch.set_num_threads(1)  # two OpenMP threads thrash when another process shares the cores


@pytest.fixture
def viz_host(monkeypatch):
    """A plugin host with built-ins, the tiny plugin and tlcore_viz (not the other installed plugins)."""
    monkeypatch.delenv(plugins.ENV_SELECT, raising=False)
    monkeypatch.delenv(plugins.ENV_DISABLE, raising=False)
    host = plugins.reset_host(load_installed=False)
    host.register(TinyPlugin(), "tiny")
    host.register(tlcore_viz, "viz")
    yield host
    plugins.reset_host(load_installed=False)


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
def viz_cli(viz_host, monkeypatch):
    """``tlcore`` in-process with this host's commands (the CLI adds plugin commands once per process)."""
    core = [command for command in cli.app.registered_commands if command.callback.__module__ == "tlcore.cli"]
    monkeypatch.setattr(cli.app, "registered_commands", core)
    monkeypatch.setattr(cli, "_plugin_commands_added", False)

    def run(args, capsys):
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
