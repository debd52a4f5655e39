"""Training callbacks: curves.png after every epoch, the other pictures and report.html at the end."""

from __future__ import annotations

import sys
from typing import Any

from tlcore.callbacks.base import Callback
from tlcore.inference import Predictor
from tlcore.plugins import get_host
from tlcore.state import RunState
from tlcore_viz.report import CHECKPOINTS, REPORT, build_report, write_curves


class Curves(Callback):
    """Redraws curves.png in the run folder after each epoch (a fraction of a second)."""

    name = "viz_curves"

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Draw every epoch so far."""
        write_curves(run.output_dir, run.history)


class Report(Callback):
    """At the end of a run: confusion.png, predictions.png, top_losses.png and report.html.

    Evaluates best.safetensors on the validation split (one more pass over
    it); without a checkpoint (the checkpoint callback deselected), the model
    as training left it.
    """

    name = "viz_report"

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def on_fit_end(self, run: RunState) -> None:
        """Write the pictures and the report, and say where."""
        if not run.history:
            return
        live = None
        if not any((run.output_dir / name).is_file() for name in CHECKPOINTS):
            live = Predictor(run.model, run.checkpoint_info(run.history[-1]), run.device)
        build_report(
            run.output_dir, run.history, live, device=str(run.device), host=get_host(), batch_size=run.config.batch_size
        )
        print(f"tlcore: report {run.output_dir / REPORT}", file=self.stream, flush=True)
