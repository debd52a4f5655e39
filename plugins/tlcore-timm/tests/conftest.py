"""Fixtures for the tlcore-timm tests: one CPU thread, and a plugin host with the installed plugins."""

from __future__ import annotations

import pytest
import torch

from tlcore import plugins

# The test machine has two cores shared with other processes; one thread avoids thrashing.
torch.set_num_threads(1)


@pytest.fixture
def installed_host():
    """A fresh plugin host that loads installed plugins (tlcore-timm among them) through entry points."""
    host = plugins.reset_host()
    yield host
    plugins.reset_host(load_installed=False)


@pytest.fixture
def offline(monkeypatch):
    """Make any download attempt fail at once, whatever this machine's network and caches."""
    from tlcore_timm import provider

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(provider, "cached_weights_file", lambda cfg: None)
