"""pytest fixtures for testing tlcore plugins.

Installed with tlcore through the ``pytest11`` entry point, so a plugin's test
suite gets them with no import; ``pytest -p tlcore.pytest_plugin`` loads them
explicitly. Every name starts with ``tlcore_`` so none shadows a suite's own.

- ``tlcore_host``: a fresh plugin host with the built-in parts and the tiny test
  plugin ``tlcore.testing`` (backbone ``tlcore.testing:tiny``, dataset
  ``tlcore.testing:shapes``: reserved names no plugin can take), without installed
  plugins, set as the process-wide host for the test (``tlcore.register``,
  ``tlcore.fit`` and the CLI use it); the previous host comes back afterwards.
- ``tlcore_register(plugin, name=None)``: register a plugin (module or object)
  for this test only; returns its name.
- ``tlcore_installed(*names)``: a fresh host that also loads installed plugins
  through their entry points (only those named, when names are given).
- ``tlcore_tiny_backbone`` / ``tlcore_tiny_dataset``: a fresh tiny Backbone and
  tiny DatasetSplits, to exercise a freeze policy, a callback or a head.
- ``tlcore_run(**options)``: a short CPU training run on the tiny backbone and
  dataset (override any RunConfig field); returns the RunResult.
- ``tlcore_cli(*args)``: ``tlcore ARGS`` in-process, with the commands of the
  current host's plugins; returns ``(code, out, err)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

# tlcore itself (and torch) is imported inside the fixtures: loading this plugin costs nothing to test suites
# that never use it.
if TYPE_CHECKING:
    from tlcore.backbone import Backbone
    from tlcore.dataset import DatasetSplits
    from tlcore.plugins import PluginHost
    from tlcore.train import RunResult


class CliResult(NamedTuple):
    """What ``tlcore_cli`` returns: the exit status and the captured output."""

    code: int
    out: str
    err: str


@pytest.fixture
def _tlcore_host_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clear the plugin-selection variables and put the process-wide host back after the test."""
    from tlcore import plugins

    monkeypatch.delenv(plugins.ENV_SELECT, raising=False)
    monkeypatch.delenv(plugins.ENV_DISABLE, raising=False)
    previous = plugins._host
    yield
    plugins._host = previous


@pytest.fixture
def tlcore_host(_tlcore_host_guard: None) -> PluginHost:
    """A fresh process-wide plugin host: built-ins and the tiny test plugin, no installed plugins."""
    from tlcore import plugins
    from tlcore.testing import TINY_PLUGIN, TinyPlugin

    host = plugins.reset_host(load_installed=False)
    host.register(TinyPlugin(), TINY_PLUGIN)
    return host


@pytest.fixture
def tlcore_register(tlcore_host: PluginHost) -> Iterator[Callable[..., str]]:
    """``register(plugin, name=None) -> name``: a plugin registered on ``tlcore_host`` until the test ends."""
    names: list[str] = []

    def register(plugin: Any, name: str | None = None) -> str:
        names.append(tlcore_host.register(plugin, name))
        return names[-1]

    yield register
    for name in reversed(names):
        if name in tlcore_host.records:
            tlcore_host.unregister(name)


@pytest.fixture
def tlcore_installed(_tlcore_host_guard: None, monkeypatch: pytest.MonkeyPatch) -> Callable[..., PluginHost]:
    """``installed(*names) -> host``: a fresh process-wide host loading installed plugins (only ``names`` if given)."""
    from tlcore import plugins

    def installed(*names: str) -> PluginHost:
        if names:
            monkeypatch.setenv(plugins.ENV_SELECT, ",".join(names))
        else:
            monkeypatch.delenv(plugins.ENV_SELECT, raising=False)
        return plugins.reset_host(load_installed=True)

    return installed


@pytest.fixture
def tlcore_tiny_backbone() -> Backbone:
    """A fresh tiny Backbone (groups stem, stage1, stage2; 16 px input; 16 features)."""
    from tlcore.testing import tiny_backbone

    return tiny_backbone()


@pytest.fixture
def tlcore_tiny_dataset() -> DatasetSplits:
    """Fresh tiny DatasetSplits: two classes of 16x16 uint8 images, 36 for training, 12 for validation."""
    from tlcore.testing import shapes_dataset

    return shapes_dataset()


@pytest.fixture
def tlcore_run(tlcore_host: PluginHost, tmp_path) -> Callable[..., RunResult]:
    """``run(**options) -> RunResult``: one epoch of the tiny backbone on the tiny dataset, on CPU, unless overridden.

    Each call writes a new folder under ``tmp_path``. Progress output is off; torch uses one thread during the run.
    """
    from tlcore.api import fit
    from tlcore.testing import TINY_BACKBONE, TINY_DATASET

    counter = itertools.count(1)

    def run(**options: Any) -> RunResult:
        import torch

        values: dict[str, Any] = dict(
            backbone=TINY_BACKBONE,
            dataset=TINY_DATASET,
            weights="none",
            epochs=1,
            batch_size=8,
            lr=0.01,
            device="cpu",
            workers=0,  # worker processes cost more than tiny data saves
            callbacks="-progress",
            output=str(tmp_path / f"tlcore-run-{next(counter)}"),
        )
        values.update(options)
        # One thread: tiny models gain nothing from more, and test runs sharing the cores would thrash.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fit(host=tlcore_host, **values)
        finally:
            torch.set_num_threads(threads)

    return run


@pytest.fixture
def tlcore_cli(tlcore_host: PluginHost, monkeypatch: pytest.MonkeyPatch, capsys) -> Callable[..., CliResult]:
    """``cli(*args) -> CliResult(code, out, err)``: ``tlcore ARGS`` in-process against ``tlcore_host``."""
    from tlcore import cli

    # The CLI adds plugin commands once per process; start each call from the core commands so that plugins
    # registered during the test contribute theirs.
    core = [command for command in cli.app.registered_commands if command.callback.__module__ == cli.__name__]

    def run(*args: Any) -> CliResult:
        monkeypatch.setattr(cli.app, "registered_commands", list(core))
        monkeypatch.setattr(cli, "_plugin_commands_added", False)
        capsys.readouterr()
        try:
            cli.main([str(arg) for arg in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
