"""What a run prints while it trains: a banner, a live bar or periodic lines, one summary line per epoch.

On a terminal the ``progress`` callback draws a rich progress bar per epoch
(step, images/s, running loss, time left in the epoch and in the run); when
the output is not a terminal (CI logs, a file, a test's captured output) it
prints a plain line every ``PLAIN_FRACTION`` of the epoch or every
``PLAIN_SECONDS``, whichever comes first, but not within ``PLAIN_MIN_SECONDS``
of the last one (an epoch of a few seconds prints its summary only).
``--quiet`` keeps only the per-epoch summaries and the end-of-run lines.

Reading the device. The running loss is a tensor on the device and reading
it waits for every queued step (a host synchronisation). It is read only when
a bar redraw or a plain line is due, and never twice within
``REFRESH_SECONDS`` (0.5 s): at most two reads a second on a terminal, as
before this module existed, and in plain mode at most ``1 / PLAIN_FRACTION``
reads per epoch plus one per ``PLAIN_SECONDS``, never two within
``PLAIN_MIN_SECONDS``. Everything else shown (steps,
images, times) is counted on the host. The module imports neither torch nor
rich at import time: the plugin host loads it for every command, and rich is
imported only when a bar is drawn.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from tlcore.callbacks.base import Callback
from tlcore.messages import shorten

if TYPE_CHECKING:
    from tlcore.state import RunState

REFRESH_SECONDS = 0.5  # the shortest interval between two reads of the device-side loss, in any mode
PLAIN_FRACTION = 0.1  # plain mode: a line every tenth of the epoch...
PLAIN_SECONDS = 30.0  # ...or every 30 seconds, whichever comes first...
PLAIN_MIN_SECONDS = 5.0  # ...but never within 5 seconds of the last: a short epoch has only its summary line


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal a bar can redraw (not a pipe, a file, or TERM=dumb)."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def format_duration(seconds: float | None) -> str:
    """``seconds`` as H:MM:SS (or M:SS under an hour); ``?`` when unknown (None, negative or not finite)."""
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress(Callback):
    """The ``progress`` callback: banner, a bar (terminal) or periodic lines (otherwise), epoch summaries.

    ``stream``: where to print (default: standard error at construction).
    ``quiet``: no banner, bar or periodic lines; only the per-epoch summaries
    and the end-of-run lines. ``live``: force the bar on or off (default: on
    when ``stream`` is a terminal). ``clock``: seconds, monotonic (tests pass
    their own).
    """

    name = "progress"

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        live: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = is_terminal(self.stream) if live is None else live
        self.clock = clock
        self.trainable = -1
        self.loss_reads = 0  # device reads of the running loss, for tests and the curious
        self._bar: Any = None  # the rich Progress of the current epoch, on a terminal
        self._task: Any = None
        self._reset_epoch(0.0, 0, 0)
        self._epoch_seconds: list[float] = []  # wall time of each whole epoch this process ran, validation included

    # -- events ----------------------------------------------------------------------------------------------------

    def on_fit_start(self, run: RunState) -> None:
        """Say what is about to train, and where it is written."""
        if self.quiet:
            return
        batch = f"batch {run.config.batch_size}" + (f"x{run.config.accumulate}" if run.config.accumulate > 1 else "")
        self._say(
            f"tlcore: {run.config.backbone} ({run.backbone.weights}) on {run.config.dataset}, "
            f"{len(run.classes)} classes, {run.image_size}px, {batch}, {run.device.type}, "
            f"{run.pipeline} pipeline; writing {run.output_dir}"
        )
        if run.threads or run.precision:  # the thread budget and the precision: what decides the speed on a CPU
            self._say("tlcore: " + "; ".join(part for part in (run.precision, run.threads) if part))
        for note in run.data_notes:  # where validation came from; what was skipped while listing the data
            self._say(f"tlcore: {note}")

    def on_epoch_start(self, run: RunState) -> None:
        """Say how much trains whenever that changes (a policy may unfreeze); start the epoch's clock and bar."""
        if not self.quiet:
            trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
            if trainable != self.trainable:
                self.trainable = trainable
                total = sum(p.numel() for p in run.model.parameters())
                self._say(f"epoch {run.epoch + 1}: {trainable:,} of {total:,} parameters train")
        self._reset_epoch(self.clock(), run.epoch_step, run.epoch_images)
        if self.live and not self.quiet:
            self._start_bar(run)

    def on_train_batch_end(self, run: RunState) -> None:
        """Redraw the bar, or print a plain line, when one is due; the loss is read only then."""
        if self.quiet:
            return
        now = self.clock()
        if now - self._last_read < REFRESH_SECONDS:
            return  # never two device reads within REFRESH_SECONDS
        if not self.live and not self._plain_due(run, now):
            return
        self._last_read = now
        loss = self._read_loss(run)
        numbers = self._numbers(run, now)
        if self.live and self._bar is not None:
            self._bar.update(
                self._task,
                completed=run.epoch_step,
                loss="?" if loss is None else f"{loss:.4f}",
                rate=f"{numbers['rate']:,.0f} img/s",
                eta=format_duration(numbers["epoch_left"]),
                run_eta=format_duration(numbers["run_left"]),
            )
            self._bar.refresh()
            return
        self._last_plain_step, self._last_plain_time = run.epoch_step, now
        share = run.epoch_step / run.steps_per_epoch if run.steps_per_epoch else 0.0
        self._say(
            f"epoch {run.epoch + 1}/{run.config.epochs} step {run.epoch_step}/{run.steps_per_epoch} ({share:.0%}) "
            + ("" if loss is None else f"loss {loss:.4f} ")
            + f"{numbers['rate']:,.0f} img/s eta {format_duration(numbers['epoch_left'])} "
            f"run {format_duration(numbers['run_left'])}"
        )

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Close the epoch's bar; one summary line per epoch (also under --quiet)."""
        self._stop_bar()
        self._epoch_seconds.append(max(self.clock() - self._epoch_started, 0.0))
        self._say(
            f"epoch {metrics['epoch']}/{run.config.epochs} train_loss {metrics['train_loss']:.4f} "
            f"train_acc {metrics['train_acc']:.4f} val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_acc']:.4f} "
            + (f"val_map {metrics['val_map']:.4f} " if "val_map" in metrics else "")
            + (f"ema_val_acc {metrics['ema_val_acc']:.4f} " if "ema_val_acc" in metrics else "")
            + f"lr {metrics['lr']:.2e} {metrics['images_per_second']:,.0f} img/s {metrics['seconds']:.1f}s"
        )

    def on_exception(self, run: RunState, error: BaseException) -> None:
        """Take the bar off the terminal before the error or the --resume hint is printed."""
        self._stop_bar()

    def on_fit_end(self, run: RunState) -> None:
        """Where the results are, and what was skipped."""
        self._stop_bar()
        if run.unreadable:
            shown = shorten(run.unreadable, 3, "; ")
            self._say(f"tlcore: skipped {len(run.unreadable)} unreadable images: {shown}")
        if run.nonfinite_batches:
            self._say(f"tlcore: skipped {run.nonfinite_batches} batches with a non-finite loss")
        if run.stop_reason:
            self._say(f"tlcore: stopped early: {run.stop_reason}")
        from tlcore.ema import selection_metric  # val_acc, or val_map for a multilabel run

        best = max(run.history, key=lambda m: m[selection_metric(m)], default=None)
        if best is not None:
            key = selection_metric(best)
            self._say(f"tlcore: best {key} {best[key]:.4f} at epoch {best['epoch']}; run folder {run.output_dir}")

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _reset_epoch(self, now: float, step: int, images: int) -> None:
        self._epoch_started = now
        self._start_step, self._start_images = step, images  # a resumed epoch starts part-way
        self._last_read = float("-inf")
        self._last_plain_step, self._last_plain_time = step, now

    def _plain_due(self, run: RunState, now: float) -> bool:
        """A plain line is due every PLAIN_FRACTION of the epoch (at most every PLAIN_MIN_SECONDS) or every
        PLAIN_SECONDS; never at the epoch's last step, which its summary line follows at once."""
        total = run.steps_per_epoch
        if total and run.epoch_step >= total:
            return False  # the summary line follows at once
        since = now - self._last_plain_time
        every = max(1, int(total * PLAIN_FRACTION)) if total else 0
        by_steps = bool(every) and run.epoch_step - self._last_plain_step >= every and since >= PLAIN_MIN_SECONDS
        return by_steps or since >= PLAIN_SECONDS

    def _read_loss(self, run: RunState) -> float | None:
        self.loss_reads += 1
        return run.running_loss()  # the one device read (a synchronisation)

    def _numbers(self, run: RunState, now: float) -> dict[str, float | None]:
        """images/s this epoch, and the seconds left in the epoch and in the run (None when not yet known).

        The epoch's remaining time is its remaining steps at this epoch's pace
        so far; the run's adds the epochs still to come, each as long as the
        whole epochs (validation included) measured so far, or this epoch's
        projected training time before any finished.
        """
        elapsed = max(now - self._epoch_started, 1e-9)
        steps = run.epoch_step - self._start_step
        rate = (run.epoch_images - self._start_images) / elapsed
        if steps <= 0:
            return {"rate": rate, "epoch_left": None, "run_left": None}
        per_step = elapsed / steps
        epoch_left = max(run.steps_per_epoch - run.epoch_step, 0) * per_step
        later = max(run.config.epochs - run.epoch - 1, 0)
        if self._epoch_seconds:
            per_epoch = sum(self._epoch_seconds) / len(self._epoch_seconds)
        else:
            per_epoch = run.steps_per_epoch * per_step
        return {"rate": rate, "epoch_left": epoch_left, "run_left": epoch_left + later * per_epoch}

    def _start_bar(self, run: RunState) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bar

        self._stop_bar()
        console = Console(file=self.stream, force_terminal=True)
        self._bar = Bar(
            TextColumn(f"epoch {run.epoch + 1}/{run.config.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("eta {task.fields[eta]}"),
            TextColumn("run {task.fields[run_eta]}"),
            console=console,
            auto_refresh=False,  # redrawn only when the loss is read: no thread, no extra device reads
            transient=True,  # the summary line replaces the bar
        )
        self._task = self._bar.add_task(
            "train", total=max(run.steps_per_epoch, 1), completed=run.epoch_step, rate="", loss="?", eta="?", run_eta="?"
        )
        self._bar.start()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.stop()
