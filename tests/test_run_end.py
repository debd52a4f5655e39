"""However a run ends (finished, interrupted, failed), callbacks hear of it and the process group is left."""

from __future__ import annotations

import os
import signal

import pytest

import tlcore
from tlcore import distributed
from tlcore.callbacks import Callback
from tlcore.errors import ConfigError, PluginError
from tlcore.interrupt import RunInterrupted
from tlcore.train import fit


class Recorder(Callback):
    """Writes down the events it receives, in order; raises in ``fail_in`` and sends SIGINT after step ``stop_at``."""

    def __init__(self, events, fail_in=(), stop_at=None):
        self.events, self.fail_in, self.stop_at = events, fail_in, stop_at

    def _note(self, event, *details):
        self.events.append((event, *details))
        if event in self.fail_in:
            raise ValueError(f"broken in {event}")

    def on_fit_start(self, run):
        self._note("on_fit_start")

    def on_train_batch_end(self, run):
        self._note("on_train_batch_end")
        if run.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    def on_exception(self, run, error):
        self._note("on_exception", type(error).__name__)

    def on_fit_end(self, run):
        self._note("on_fit_end")


def recording(host, name, **options):
    events = []

    class RecorderPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register(name, lambda config: Recorder(events, **options))

    host.register(RecorderPlugin(), name.replace(":", "-"))
    return events


@pytest.fixture
def left(monkeypatch):
    """The places whose process group fit left (distributed.teardown calls)."""
    calls = []
    real = distributed.teardown
    monkeypatch.setattr(distributed, "teardown", lambda place: calls.append(place) or real(place))
    return calls


def test_an_interrupted_run_tells_callbacks_then_ends_them(host, tiny_config, left):
    events = recording(host, "test:recorder", stop_at=2)
    with pytest.raises(RunInterrupted):
        fit(tiny_config(epochs=2, callbacks=["test:recorder"]), host)
    assert events[0] == ("on_fit_start",)
    assert events[-2:] == [("on_exception", "RunInterrupted"), ("on_fit_end",)]
    assert len(left) == 1


def test_a_failing_run_reaches_every_callback_and_raises_its_own_error(host, tiny_config, left, capsys):
    first = recording(host, "test:broken", fail_in=("on_train_batch_end", "on_fit_end"))
    second = recording(host, "test:watcher")
    with pytest.raises(PluginError, match=r"^callback test:broken failed in on_train_batch_end: ValueError"):
        fit(tiny_config(epochs=1, callbacks=["test:broken", "test:watcher"]), host)
    # the watcher still hears of the end although the broken callback raised again in on_fit_end
    assert second[-2:] == [("on_exception", "PluginError"), ("on_fit_end",)]
    assert first[-2:] == [("on_exception", "PluginError"), ("on_fit_end",)]
    assert "tlcore: warning: callback test:broken failed in on_fit_end: ValueError: broken in on_fit_end" in (
        capsys.readouterr().err
    )
    assert len(left) == 1


def test_a_finished_run_ends_callbacks_once_and_skips_on_exception(host, tiny_config, left):
    events = recording(host, "test:recorder")
    fit(tiny_config(epochs=1, callbacks=["test:recorder"]), host)
    assert [event for event, *_ in events].count("on_fit_end") == 1
    assert not any(event == "on_exception" for event, *_ in events)
    assert events[-1] == ("on_fit_end",) and len(left) == 1


def test_callbacks_never_started_are_not_ended(host, tiny_config, left):
    events = recording(host, "test:recorder")
    with pytest.raises(ConfigError):  # refused before on_fit_start: nothing was opened
        fit(tiny_config(epochs=1, callbacks=["test:recorder"], cache_features=True), host)
    assert events == []
