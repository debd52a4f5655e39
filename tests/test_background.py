"""The training state is written on a thread: in order, waited for, failures raised."""

from __future__ import annotations

import threading

import pytest

from tlcore.background import BackgroundWrite
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.train import fit


def test_writes_run_one_at_a_time_in_order():
    writer, order, release = BackgroundWrite(), [], threading.Event()

    def slow():
        release.wait(5)
        order.append("first")

    writer.submit(slow)
    threading.Timer(0.05, release.set).start()
    writer.submit(lambda: order.append("second"))  # waits for the first before starting
    writer.wait()
    assert order == ["first", "second"]


def test_a_failed_write_is_raised_at_the_next_wait():
    writer = BackgroundWrite()
    writer.submit(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once


def test_the_last_state_is_on_disk_when_fit_returns(host, tiny_config):
    result = fit(tiny_config(epochs=2), host)
    state = load_train_state(result.output_dir)
    assert state.record["epoch"] == 2 and len(state.record["history"]) == 2
    assert not [p for p in result.output_dir.iterdir() if p.name.endswith(".tmp")]
    assert (result.output_dir / STATE_FILE).exists()
