"""Built-in callbacks: progress (tlcore.progress), metrics log, CSV log, checkpointing, model card, early stopping.

Registered through ``tlcore_register_callbacks`` like any plugin's. The plugin
host loads this module for every command, `tlcore --help` included, so it
imports no torch: the checkpoint writer is imported when a checkpoint is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlcore.callbacks.base import Callback
from tlcore.files import append_json_line, atomic_link_or_copy, atomic_write_bytes
from tlcore.hookspecs import hookimpl
from tlcore.progress import Progress
from tlcore.registry import Register

if TYPE_CHECKING:
    from tlcore.state import RunState


class MetricsLog(Callback):
    """Appends one JSON object per epoch to metrics.jsonl, before any other callback acts on the epoch.

    It runs first (``order``), so a checkpoint is never written for an epoch
    that metrics.jsonl lacks, whatever order --callbacks gives.
    """

    name = "metrics"
    order = -1

    def __init__(self) -> None:
        self.redone: int | None = None  # a resumed run: the epoch it redoes whose line is still kept

    def on_fit_start(self, run: RunState) -> None:
        """A resumed run rewrites the log from its saved history, keeping the line of the epoch it will redo.

        That epoch finished before the run stopped (its checkpoints may be on
        disk) but its state was not saved; its line stays until the redone
        epoch replaces it, so no checkpoint on disk lacks its metrics line.
        """
        if not run.history:
            return
        path = run.output_dir / "metrics.jsonl"
        lines = [json.dumps(m) + "\n" for m in run.history]
        following = _line_of_epoch(path, len(run.history) + 1)
        if following is not None:
            lines.append(following)
            self.redone = len(run.history) + 1
        atomic_write_bytes(path, "".join(lines).encode())

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Append the epoch's metrics (replacing the kept line of a redone epoch)."""
        path = run.output_dir / "metrics.jsonl"
        if self.redone is not None:
            self.redone = None
            atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in run.history).encode())
            return
        append_json_line(path, metrics)


def _line_of_epoch(path: Path, epoch: int) -> str | None:
    """The line of metrics.jsonl for ``epoch`` (numbered from 1), as written; None when there is none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("epoch") == epoch:
            return line + "\n"
    return None


class CsvLog(Callback):
    """metrics.csv beside metrics.jsonl: one row per epoch, a header of every key seen (first-seen order).

    The whole file is written again from ``run.history`` each epoch, to a
    temporary file renamed over the old one: a key that appears later (a
    plugin's metric) extends the header and earlier rows get empty cells; a
    resumed run rewrites it from its restored history, so no epoch is listed
    twice; a killed run leaves the previous whole file. Values that are not
    numbers or text (lists, mappings) are written as JSON.
    """

    name = "csv"

    def on_fit_start(self, run: RunState) -> None:
        """A resumed run: the rows of its completed epochs (none for a fresh run)."""
        if run.history:
            self._write(run)

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Rewrite metrics.csv with the epoch just recorded."""
        self._write(run)

    @staticmethod
    def _write(run: RunState) -> None:
        import csv
        import io

        header: dict[str, None] = {}
        for record in run.history:
            header.update(dict.fromkeys(record))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(header), restval="", lineterminator="\n")
        writer.writeheader()
        for record in run.history:
            writer.writerow({key: _csv_cell(value) for key, value in record.items()})
        atomic_write_bytes(run.output_dir / "metrics.csv", out.getvalue().encode("utf-8"))


def _csv_cell(value: Any) -> Any:
    """A cell: numbers and text as they are, None empty, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


class Checkpoint(Callback):
    """Writes last.safetensors every epoch and best.safetensors when val_acc (multilabel: val_map) improves."""

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
        """Save the model with everything needed to rebuild it.

        Under --ema the files hold the moving average when it validated better that epoch (the metrics'
        ``checkpoint_weights`` says which), and best is judged by the accuracy of the weights held.
        """
        from tlcore.checkpoint import save_checkpoint
        from tlcore.ema import held_val_acc

        save_checkpoint(run.output_dir / "last.safetensors", run.checkpoint_model(metrics), run.checkpoint_info(metrics))
        run.saved_epochs["last.safetensors"] = metrics["epoch"]
        if held_val_acc(metrics) > self.best_acc:
            self.best_acc = held_val_acc(metrics)
            # the same bytes as last: a hard link (atomic, no second write), a copy where links are not supported
            atomic_link_or_copy(run.output_dir / "last.safetensors", run.output_dir / "best.safetensors")
            run.saved_epochs["best.safetensors"] = metrics["epoch"]


class EarlyStopping(Callback):
    """Stops when val_acc (multilabel: val_map) has not improved for ``early_stopping_patience`` epochs (0: never)."""

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
        """Count epochs without improvement (of the weights the checkpoints hold, under --ema)."""
        if self.patience <= 0:
            return
        from tlcore.ema import held_val_acc, selection_metric

        if held_val_acc(metrics) > self.best:
            self.best, self.waited = held_val_acc(metrics), 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            run.should_stop = True
            key = selection_metric(metrics)
            run.stop_reason = f"{key} has not improved for {self.patience} epochs (best {self.best:.4f})"


def _model_card(config) -> Callback:
    from tlcore.model_card import ModelCard  # when a run starts: listing callbacks need not load it

    return ModelCard()


@hookimpl
def tlcore_register_callbacks(register: Register) -> None:
    """Register the built-in callbacks; all but ``csv`` run by default."""
    register(
        "progress",
        lambda config: Progress(quiet=config.quiet),
        default=True,
        description="a progress bar on a terminal, periodic lines otherwise; epoch summaries (--quiet: those only)",
    )
    register("metrics", lambda config: MetricsLog(), default=True, description="metrics.jsonl, one line per epoch")
    register("csv", lambda config: CsvLog(), description="metrics.csv, one row per epoch (--callbacks +csv)")
    register("checkpoint", lambda config: Checkpoint(), default=True, description="best.safetensors and last.safetensors")
    register("model_card", _model_card, default=True, description="README.md, the model card: after each epoch, at the end")
    register(
        "early_stopping",
        lambda config: EarlyStopping(config.early_stopping_patience),
        default=True,
        description="stop after --early-stopping-patience epochs without val_acc gain (0: off)",
    )
