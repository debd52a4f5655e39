"""Built-in callbacks: progress, metrics log, checkpointing, early stopping.

Registered through ``tlcore_register_callbacks`` like any plugin's.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tlcore.callbacks.base import Callback
from tlcore.checkpoint import save_checkpoint
from tlcore.files import append_json_line, atomic_link_or_copy, atomic_write_bytes
from tlcore.hookspecs import hookimpl
from tlcore.registry import Register
from tlcore.state import RunState

REFRESH_SECONDS = 0.5  # how often the progress line reads the device-side loss


class Progress(Callback):
    """A progress line with epoch, step, loss and images/s; a summary line per epoch.

    The loss lives on the device; it is read at most every REFRESH_SECONDS so
    the GPU is never stalled step by step. Without a terminal, only the
    per-epoch summaries are printed.
    """

    name = "progress"

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.epoch_started = 0.0
        self.last_refresh = 0.0
        self.trainable = -1

    def on_fit_start(self, run: RunState) -> None:
        """Say what is about to train, and where it is written."""
        batch = f"batch {run.config.batch_size}" + (f"x{run.config.accumulate}" if run.config.accumulate > 1 else "")
        print(
            f"tlcore: {run.config.backbone} ({run.backbone.weights}) on {run.config.dataset}, "
            f"{len(run.classes)} classes, {run.image_size}px, {batch}, {run.device.type}, "
            f"{run.pipeline} pipeline; writing {run.output_dir}",
            file=self.stream,
            flush=True,
        )

    def on_epoch_start(self, run: RunState) -> None:
        """Say how much trains whenever that changes (a policy may unfreeze); start the epoch's clock."""
        trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        if trainable != self.trainable:
            self.trainable = trainable
            total = sum(p.numel() for p in run.model.parameters())
            print(f"epoch {run.epoch + 1}: {trainable:,} of {total:,} parameters train", file=self.stream, flush=True)
        self.epoch_started = self.last_refresh = time.perf_counter()

    def on_train_batch_end(self, run: RunState) -> None:
        """Redraw the live line when it is due."""
        now = time.perf_counter()
        last = run.epoch_step == run.steps_per_epoch
        if not self.live or (now - self.last_refresh < REFRESH_SECONDS and not last):
            return
        self.last_refresh = now
        rate = run.epoch_images / max(now - self.epoch_started, 1e-9)
        loss = run.running_loss()
        print(
            f"\repoch {run.epoch + 1}/{run.config.epochs} step {run.epoch_step}/{run.steps_per_epoch} "
            f"loss {loss:.4f} {rate:,.0f} img/s",
            end="",
            file=self.stream,
            flush=True,
        )

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """One summary line per epoch."""
        prefix = "\r" if self.live else ""
        print(
            f"{prefix}epoch {metrics['epoch']}/{run.config.epochs} train_loss {metrics['train_loss']:.4f} "
            f"train_acc {metrics['train_acc']:.4f} val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_acc']:.4f} "
            f"lr {metrics['lr']:.2e} {metrics['images_per_second']:,.0f} img/s {metrics['seconds']:.1f}s",
            file=self.stream,
            flush=True,
        )

    def on_fit_end(self, run: RunState) -> None:
        """Where the results are, and what was skipped."""
        if run.unreadable:
            shown = "; ".join(run.unreadable[:3]) + (" …" if len(run.unreadable) > 3 else "")
            print(f"tlcore: skipped {len(run.unreadable)} unreadable images: {shown}", file=self.stream)
        if run.nonfinite_batches:
            print(f"tlcore: skipped {run.nonfinite_batches} batches with a non-finite loss", file=self.stream)
        if run.stop_reason:
            print(f"tlcore: stopped early: {run.stop_reason}", file=self.stream)
        best = max(run.history, key=lambda m: m["val_acc"], default=None)
        if best is not None:
            print(
                f"tlcore: best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}; run folder {run.output_dir}",
                file=self.stream,
                flush=True,
            )


class MetricsLog(Callback):
    """Appends one JSON object per epoch to metrics.jsonl."""

    name = "metrics"

    def on_fit_start(self, run: RunState) -> None:
        """A resumed run rewrites the log from its saved history, dropping lines of epochs it will redo."""
        if run.history:
            atomic_write_bytes(run.output_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.history).encode())

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Append the epoch's metrics."""
        append_json_line(run.output_dir / "metrics.jsonl", metrics)


class Checkpoint(Callback):
    """Writes last.safetensors every epoch and best.safetensors when val_acc improves."""

    name = "checkpoint"

    def __init__(self):
        self.best_acc = float("-inf")

    def state_dict(self) -> dict:
        """The best val_acc so far (None before the first epoch)."""
        return {"best_acc": None if self.best_acc == float("-inf") else self.best_acc}

    def load_state_dict(self, state: dict) -> None:
        """Restore the best val_acc."""
        if state.get("best_acc") is not None:
            self.best_acc = state["best_acc"]

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Save the model with everything needed to rebuild it."""
        save_checkpoint(run.output_dir / "last.safetensors", run.model, run.checkpoint_info(metrics))
        if metrics["val_acc"] > self.best_acc:
            self.best_acc = metrics["val_acc"]
            # the same bytes as last: a hard link (atomic, no second write), a copy where links are not supported
            atomic_link_or_copy(run.output_dir / "last.safetensors", run.output_dir / "best.safetensors")


class EarlyStopping(Callback):
    """Stops when val_acc has not improved for ``early_stopping_patience`` epochs (0: never)."""

    name = "early_stopping"

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.waited = 0

    def state_dict(self) -> dict:
        """Best val_acc and epochs waited."""
        return {"best": None if self.best == float("-inf") else self.best, "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        """Restore the count."""
        if state.get("best") is not None:
            self.best = state["best"]
        self.waited = state.get("waited", 0)

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Count epochs without improvement."""
        if self.patience <= 0:
            return
        if metrics["val_acc"] > self.best:
            self.best, self.waited = metrics["val_acc"], 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            run.should_stop = True
            run.stop_reason = f"val_acc has not improved for {self.patience} epochs (best {self.best:.4f})"


@hookimpl
def tlcore_register_callbacks(register: Register) -> None:
    """Register the built-in callbacks; all run by default."""
    register("progress", lambda config: Progress(), default=True, description="progress line and epoch summaries")
    register("metrics", lambda config: MetricsLog(), default=True, description="metrics.jsonl, one line per epoch")
    register("checkpoint", lambda config: Checkpoint(), default=True, description="best.safetensors and last.safetensors")
    register(
        "early_stopping",
        lambda config: EarlyStopping(config.early_stopping_patience),
        default=True,
        description="stop after --early-stopping-patience epochs without val_acc gain (0: off)",
    )
