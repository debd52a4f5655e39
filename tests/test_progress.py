"""The progress callback: a bar on a terminal, periodic plain lines elsewhere, --quiet, and how often it reads the loss."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from tlcore.progress import REFRESH_SECONDS, Progress, format_duration, is_terminal


class Clock:
    """A clock the test advances by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeRun(SimpleNamespace):
    """What Progress reads of a RunState; counts the device reads of the running loss."""

    def running_loss(self):
        self.reads += 1
        return 0.5


def fake_run(steps: int = 100, epochs: int = 3) -> FakeRun:
    return FakeRun(
        config=SimpleNamespace(epochs=epochs, batch_size=8, accumulate=1, backbone="b", dataset="d"),
        model=torch.nn.Linear(2, 2),
        epoch=0,
        epoch_step=0,
        epoch_images=0,
        steps_per_epoch=steps,
        reads=0,
        history=[],
        unreadable=[],
        nonfinite_batches=0,
        stop_reason="",
        output_dir="out",
    )


def metrics(epoch: int) -> dict:
    return dict(
        epoch=epoch, train_loss=0.5, train_acc=0.5, val_loss=0.5, val_acc=0.5, lr=1e-3, images_per_second=10.0, seconds=1.0
    )


def train_steps(progress: Progress, run: FakeRun, clock: Clock, steps: int, seconds_per_step: float) -> None:
    for _ in range(steps):
        clock.now += seconds_per_step
        run.epoch_step += 1
        run.epoch_images += 8
        progress.on_train_batch_end(run)


@pytest.mark.parametrize("live", [False, True])
def test_the_loss_is_read_at_most_once_per_refresh_interval(live):
    """Fast steps (1 ms each): 1000 steps in one second may read the device at most 1 / REFRESH_SECONDS + 1 times."""
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=1000)
    progress = Progress(stream, live=live, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 1000, 0.001)
    assert (1 if live else 0) <= run.reads <= int(1.0 / REFRESH_SECONDS) + 1
    assert progress.loss_reads == run.reads
    progress.on_epoch_end(run, metrics(1))
    progress.on_fit_end(run)


def test_plain_lines_every_tenth_of_the_epoch_with_eta():
    """Not a terminal: a line per 10% of the epoch (slow steps), with the step, the loss, images/s and both ETAs."""
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=100, epochs=3)
    progress = Progress(stream, clock=clock)
    assert not progress.live  # a StringIO is not a terminal
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 100, 1.0)  # one second per step
    lines = [line for line in stream.getvalue().splitlines() if " step " in line]
    assert len(lines) == 9  # at 10%, 20%, ... 90%; the summary line stands for 100%
    assert lines[0] == "epoch 1/3 step 10/100 (10%) loss 0.5000 8 img/s eta 1:30 run 4:50"
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()  # plain text for CI logs
    assert run.reads == 9


def test_plain_lines_every_thirty_seconds_of_a_long_epoch():
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=10_000, epochs=1)
    progress = Progress(stream, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 100, 1.0)  # 100 s: 1% of the epoch, three 30 s marks
    assert len([line for line in stream.getvalue().splitlines() if " step " in line]) == 3


def test_a_short_epoch_prints_only_its_summary():
    """Fast steps: nothing between the epoch's first line and its summary, and the device is never read."""
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=100, epochs=1)
    progress = Progress(stream, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 100, 0.04)  # 4 s in all
    progress.on_epoch_end(run, metrics(1))
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["1:", "1/1"] and run.reads == 0


def test_run_eta_uses_the_measured_length_of_finished_epochs():
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=10, epochs=3)
    progress = Progress(stream, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 10, 1.0)
    clock.now += 10.0  # validation took as long as training
    progress.on_epoch_end(run, metrics(1))
    run.epoch, run.epoch_step, run.epoch_images = 1, 0, 0
    stream.truncate(0)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 5, 1.0)
    line = next(line for line in stream.getvalue().splitlines() if "step 5/10" in line)
    assert line.endswith("eta 0:05 run 0:25")  # 5 s of this epoch + one more epoch of 20 s


def test_quiet_prints_only_the_summaries():
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=100)
    progress = Progress(stream, quiet=True, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 100, 1.0)
    progress.on_epoch_end(run, metrics(1))
    assert run.reads == 0
    assert stream.getvalue().splitlines() == [
        "epoch 1/3 train_loss 0.5000 train_acc 0.5000 val_loss 0.5000 val_acc 0.5000 lr 1.00e-03 10 img/s 1.0s"
    ]


def test_terminal_bar_is_drawn_and_replaced_by_the_summary():
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=100)
    progress = Progress(stream, live=True, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 48, 0.125)  # exact in binary: redrawn at steps 1, 5, ... 45
    drawn = stream.getvalue()
    assert run.reads == 12
    assert "45/100" in drawn and "loss 0.5000" in drawn and "64 img/s" in drawn and "eta 0:07 run 0:32" in drawn
    progress.on_epoch_end(run, metrics(1))
    assert progress._bar is None
    assert stream.getvalue().rstrip().endswith("img/s 1.0s")


def test_an_error_mid_epoch_takes_the_bar_down():
    clock, stream, run = Clock(), io.StringIO(), fake_run(steps=100)
    progress = Progress(stream, live=True, clock=clock)
    progress.on_epoch_start(run)
    train_steps(progress, run, clock, 5, 1.0)
    progress.on_exception(run, RuntimeError("boom"))
    progress.on_fit_end(run)
    assert progress._bar is None


def test_is_terminal_and_durations(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert is_terminal(Tty()) and not is_terminal(io.StringIO()) and not is_terminal(object())
    monkeypatch.setenv("TERM", "dumb")
    assert not is_terminal(Tty())
    assert [format_duration(s) for s in (None, -1.0, float("inf"), 59.4, 61, 3600 * 2 + 5)] == [
        "?", "?", "?", "0:59", "1:01", "2:00:05"
    ]


def test_a_run_through_the_cli_prints_plain_lines_and_quiet_silences_them(tlcore_cli, tmp_path, monkeypatch):
    """The captured output of `tlcore run` is not a terminal: plain lines, no escape codes; --quiet leaves the summaries."""
    import tlcore.progress as progress

    monkeypatch.setattr(progress, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(progress, "PLAIN_SECONDS", 0.0)  # a line at every step of the tiny run
    monkeypatch.setattr(progress, "PLAIN_MIN_SECONDS", 0.0)
    common = ["run", "--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes", "--weights", "none",
              "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
    code, out, err = tlcore_cli(*common, "--output", tmp_path / "loud")
    assert code == 0, err
    assert "tlcore: tlcore.testing:tiny" in err and " step 1/" in err and "\x1b" not in err
    code, out, err = tlcore_cli(*common, "--output", tmp_path / "quiet", "--quiet")
    assert code == 0, err
    assert " step " not in err and "tlcore: tlcore.testing:tiny" not in err
    assert "epoch 1/1 train_loss" in err and "best val_acc" in err
