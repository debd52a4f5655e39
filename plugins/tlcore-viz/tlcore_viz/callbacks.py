"""Training callbacks: curves.png after every epoch, the other pictures and report.html at the end."""

from __future__ import annotations

import sys
from typing import Any

from tlcore import Callback, EvalReport, Predictor, RunState, get_host
from tlcore_viz.report import CHECKPOINTS, CV_FILE, REPORT, build_report, write_curves, write_folds_figure


class Curves(Callback):
    """Redraws curves.png in the run folder after each epoch (a fraction of a second)."""

    name = "viz_curves"

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """Draw every epoch so far."""
        write_curves(run.output_dir, run.history)


class Report(Callback):
    """At the end of a run: confusion.png, predictions.png, top_losses.png and report.html.

    Reports best.safetensors (else last.safetensors; without either, the
    checkpoint callback deselected, the model as training left it). When the
    run kept the validation outputs of that checkpoint's epoch
    (``run.best_validation``, ``run.last_validation``), the figures are drawn
    from them, with no second pass over the validation data; otherwise (a
    resumed run whose best epoch came before the resume, a distributed run,
    unreadable validation images) the checkpoint is evaluated on the split.
    """

    name = "viz_report"

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def on_fit_end(self, run: RunState) -> None:
        """Write the pictures and the report, and say where."""
        if not run.history:
            return
        live, evaluation = None, None
        saved = next((name for name in CHECKPOINTS if (run.output_dir / name).is_file()), None)
        if saved is None:  # the model in memory: the last completed epoch's
            evaluation = kept_evaluation(run, run.history[-1]["epoch"], "the model in memory")
            if evaluation is None:
                live = Predictor(run.model, run.checkpoint_info(run.history[-1]), run.device)
        else:  # the epoch the file holds, when this process wrote it
            epoch = run.saved_epochs.get(saved)
            evaluation = None if epoch is None else kept_evaluation(run, epoch, str(run.output_dir / saved))
        build_report(
            run.output_dir,
            run.history,
            live,
            device=str(run.device),
            host=get_host(),
            batch_size=run.config.batch_size,
            evaluation=evaluation,
        )
        print(f"tlcore: report {run.output_dir / REPORT}", file=self.stream, flush=True)
        parent = run.output_dir.parent
        if run.config.folds is not None and (parent / CV_FILE).is_file():  # a fold of `tlcore cv`
            drawn = write_folds_figure(parent, (run.config.fold, run.history))
            if drawn is not None:
                print(f"tlcore: per-fold curves {drawn}", file=self.stream, flush=True)


def kept_evaluation(run: RunState, epoch: int, checkpoint: str) -> EvalReport | None:
    """The report of ``epoch``'s model from the validation outputs the run kept; None when it kept none of it."""
    kept = [run.best_validation, run.last_validation]
    validation = next((v for v in kept if v is not None and v.epoch == epoch), None)
    if validation is None or run.splits is None:
        return None
    return EvalReport.from_validation(
        validation,
        run.splits,
        checkpoint=checkpoint,
        backbone=run.config.backbone,
        dataset=run.config.dataset,
        data_dir=run.config.data_dir,
        temperature=getattr(run, "temperatures", {}).get(epoch, 1.0),  # the epoch's calibration (RunState.calibrate)
        thresholds=run.thresholds.get(epoch),  # multilabel: the epoch's, those its checkpoint carries; else None
    )
