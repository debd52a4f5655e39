"""tlcore-viz: pictures of a run (curves, confusion matrix, predictions, top losses), report.html, TensorBoard.

Multi-label runs: per-class scores and precision-recall curves in place of the confusion matrix.

A tlcore plugin (entry point ``viz``). Its callbacks run by default once it
is installed; ``tlcore report RUN_DIR`` rebuilds everything for a finished
run. matplotlib is imported only when a picture is drawn, so loading the
plugin costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tlcore import Register, hookimpl
from tlcore_viz import tensorboard

__version__ = "0.1.0"


def _curves(config):
    from tlcore_viz.callbacks import Curves  # late: it pulls in tlcore's inference stack (torchvision)

    return Curves()


def _report(config):
    from tlcore_viz.callbacks import Report

    return Report()


@hookimpl
def tlcore_register_callbacks(register: Register) -> None:
    """curves.png per epoch, the report at fit end; TensorBoard logs when tensorboard is installed."""
    register("viz_curves", _curves, default=True, description="curves.png after every epoch")
    register(
        "viz_report",
        _report,
        default=True,
        description="confusion.png (multilabel: per_class.png, pr_curves.png), predictions.png, top_losses.png, "
        "report.html at the end",
    )
    on = tensorboard.available()
    register(
        "tensorboard",
        tensorboard.make_tensorboard,
        default=on,
        description="TensorBoard scalars in <run>/tensorboard" + ("" if on else " (needs: pip install tensorboard)"),
    )


def report_command(
    run_dir: Path = typer.Argument(
        ..., help="a run folder (config.json, metrics.jsonl, best.safetensors), or a `tlcore cv` folder (cv.json)"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    batch_size: int = typer.Option(64, help="images per batch for the evaluation"),
    split: str = typer.Option(
        None, help="the split the figures show: val | train | test | all (default: val, the split the run validated on)"
    ),
) -> None:
    """Rebuild curves.png, confusion.png, predictions.png, top_losses.png and report.html for a finished run.

    A multi-label run (--task multilabel) gets per_class.png and pr_curves.png in place of confusion.png and the
    calibration figures. For a `tlcore cv` folder (cv.json): folds.png, every fold's validation curves.
    """
    from tlcore_viz.report import CV_FILE, build_report, write_folds_figure

    if (Path(run_dir) / CV_FILE).is_file() and not (Path(run_dir) / "config.json").is_file():
        drawn = write_folds_figure(run_dir)
        typer.echo(f"wrote {drawn}" if drawn is not None else f"note: no finished fold in {run_dir / CV_FILE}")
        return

    result = build_report(run_dir, device=device, batch_size=batch_size, split=split)
    for note in result.notes:
        typer.echo(f"note: {note}")
    for path in result.written:
        typer.echo(f"wrote {path}")
    evaluation = result.evaluation
    if evaluation is not None and evaluation.multilabel is not None:
        scores = evaluation.multilabel
        typer.echo(
            f"{evaluation.split} mAP {scores.map:.4f}, F1 micro {scores.f1_micro:.4f} macro {scores.f1_macro:.4f}, "
            f"subset accuracy {scores.subset_accuracy:.4f} ({scores.images} images)"
        )
    elif evaluation is not None:
        m = evaluation.metrics
        typer.echo(
            f"{evaluation.split} accuracy {m.accuracy:.4f} ({m.correct}/{m.images}), macro F1 {m.macro['f1']:.4f}"
        )


@hookimpl
def tlcore_register_commands(app: typer.Typer) -> None:
    """Add `tlcore report`."""
    app.command("report")(report_command)
