"""Built-in commands beyond run/list/info/plugins, added through ``tlcore_register_commands`` like a plugin's.

``eval``, ``predict`` and ``export`` work on a checkpoint after training. Each
parses its options and calls tlcore.evaluation, tlcore.inference or
tlcore.export; the heavy imports happen inside the commands so that
``tlcore list`` stays quick.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tlcore.hookspecs import hookimpl

CHECKPOINT_HELP = "a .safetensors checkpoint a run wrote, or its run folder (best.safetensors)"


def eval_command(
    checkpoint: Path = typer.Option(..., help=CHECKPOINT_HELP),
    dataset: str = typer.Option(None, help="dataset name (default: the one the checkpoint was trained on)"),
    data_dir: str = typer.Option(None, help="dataset folder (default: the recorded one, for the recorded dataset)"),
    split: str = typer.Option("val", help="val | train"),
    batch_size: int = typer.Option(64, help="images per batch"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    workers: int = typer.Option(None, help="DataLoader worker processes"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Accuracy, top-5, per-class precision/recall/F1 and the confusion matrix of a checkpoint on a dataset."""
    from tlcore.evaluation import evaluate_checkpoint, render_report

    report = evaluate_checkpoint(checkpoint, dataset, data_dir, split, batch_size, device, workers)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_report(report))


def predict_command(
    images: list[Path] = typer.Argument(..., help="image files and folders (searched recursively)"),
    checkpoint: Path = typer.Option(..., help=CHECKPOINT_HELP),
    top_k: int = typer.Option(5, help="classes to show per image"),
    batch_size: int = typer.Option(64, help="images per batch"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output (a JSON list)"),
) -> None:
    """Top-k classes with probabilities for each image; unreadable files are reported and skipped."""
    from tlcore.inference import find_images, load_checkpoint, predict_files, render_prediction

    files = find_images(images)  # fails before the model loads when there is nothing to do
    predictor = load_checkpoint(checkpoint, device)
    width = max(len(str(path)) for path in files)
    results = []
    for prediction in predict_files(predictor, files, top_k, batch_size, warn=_warn):
        if as_json:
            results.append(prediction.to_dict())
        else:
            typer.echo(render_prediction(prediction, width))
    if as_json:
        typer.echo(json.dumps(results, indent=2))


def export_command(
    checkpoint: Path = typer.Option(..., help=CHECKPOINT_HELP),
    export_format: str = typer.Option(..., "--format", help="torchscript | pt2 | onnx"),
    output: Path = typer.Option(None, help="file to write (default: beside the checkpoint, e.g. best.pt2)"),
) -> None:
    """Export a checkpoint (normalised float NCHW in, logits out), checked against it; writes <output>.json beside."""
    from tlcore.export import export_checkpoint

    result = export_checkpoint(checkpoint, export_format, output)
    typer.echo(
        f"exported {result.format} to {result.path} (checked on input {list(result.checked_shape)}: "
        f"max |difference| {result.max_abs_diff:.1e}); classes and preprocessing in {result.sidecar}"
    )


def _warn(message: str) -> None:
    print(f"tlcore: warning: {message}", file=sys.stderr, flush=True)


@hookimpl
def tlcore_register_commands(app: typer.Typer) -> None:
    """Add the built-in after-training commands: eval, predict, export."""
    app.command("eval")(eval_command)
    app.command("predict")(predict_command)
    app.command("export")(export_command)
