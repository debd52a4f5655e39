"""Built-in commands beyond run/list/info/plugins, added through ``tlcore_register_commands`` like a plugin's.

``lr-find`` runs the learning-rate range test before training (tlcore.lr_find).
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
from tlcore.plugin_options import accepts_plugin_options

CHECKPOINT_HELP = "a .safetensors checkpoint a run wrote, or its run folder (best.safetensors)"
TTA_HELP = (
    "test-time augmentation: average the softmax (multilabel: each class's sigmoid) of the centre and four corner "
    "crops, and of their mirrors where the checkpoint's data allows flips"
)
REJECT_HELP = (
    "a probability in [0, 1]: answer 'unknown' when the top calibrated probability is below it (multiclass checkpoints)"
)


def eval_command(
    checkpoint: Path = typer.Option(..., help=CHECKPOINT_HELP),
    dataset: str = typer.Option(None, help="dataset name (default: the one the checkpoint was trained on)"),
    data_dir: str = typer.Option(None, help="dataset folder (default: the recorded one, for the recorded dataset)"),
    split: str = typer.Option(
        None, help="val | train | test | all (default: val on the data it was trained on, all on other data)"
    ),
    batch_size: int = typer.Option(64, help="images per batch"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    workers: int = typer.Option(None, help="DataLoader worker processes"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP + "; reported beside the plain figures"),
    reject_below: float = typer.Option(
        None, help=REJECT_HELP + "; reports the coverage and the accuracy on the images answered"
    ),
    plugin_options: dict | None = None,  # the plugins' declared options, one flag each (accepts_plugin_options)
) -> None:
    """Accuracy, top-5, per-class precision/recall/F1, the confusion matrix and the calibration error of a checkpoint.

    A multilabel checkpoint: mAP, micro/macro F1, subset accuracy, loss and per-class threshold/AP/precision/recall/F1.
    """
    from tlcore.calibration import check_reject_below
    from tlcore.evaluation import evaluate_checkpoint, render_report

    check_reject_below(reject_below, "--reject-below")  # before anything loads
    report = evaluate_checkpoint(
        checkpoint, dataset, data_dir, split, batch_size, device, workers, tta=tta, reject_below=reject_below,
        options=plugin_options,
    )
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_report(report))


def predict_command(
    images: list[Path] = typer.Argument(..., help="image files and folders (searched recursively)"),
    checkpoint: Path = typer.Option(..., help=CHECKPOINT_HELP),
    top_k: int = typer.Option(
        None, help="classes to show per image (default 5; multilabel: none besides the predicted labels unless given)"
    ),
    batch_size: int = typer.Option(64, help="images per batch"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output (a JSON list)"),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP),
    reject_below: float = typer.Option(None, help=REJECT_HELP),
) -> None:
    """Top-k classes with calibrated probabilities for each image; unreadable files are reported and skipped.

    A multilabel checkpoint: every class whose probability reaches its threshold, with the probabilities.
    """
    from tlcore.calibration import check_reject_below
    from tlcore.config import check_option
    from tlcore.inference import check_top_k, find_images, load_checkpoint, predict_files, render_prediction

    check_top_k(top_k)  # bad options fail before any file is searched or the model loads
    check_reject_below(reject_below, "--reject-below")
    check_option("batch_size", batch_size)
    files = find_images(images)  # fails before the model loads when there is nothing to do
    predictor = load_checkpoint(checkpoint, device)
    top_k, reject_below = predictor.check_options(top_k, reject_below)  # what the checkpoint's task accepts
    width = max(len(str(path)) for path in files)
    if predictor.multilabel and not as_json:
        typer.echo("multilabel: each image's classes whose probability reaches the class's threshold, most probable first")
    if tta and not as_json:
        names = predictor.views.names
        mean = "sigmoid per class" if predictor.multilabel else "softmax"
        typer.echo(f"test-time augmentation: probabilities are the mean {mean} of {len(names)} views ({', '.join(names)})")
    results = []
    for prediction in predict_files(predictor, files, top_k, batch_size, warn=_warn, tta=tta, reject_below=reject_below):
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
        + (f"; model card in {result.card}" if result.card is not None else "")
    )


LR_FIND_OPTIONS = {
    "steps": (int, typer.Option(100, "--steps", help="optimizer steps of the test (fastai's num_it)")),
    "start_lr": (float, typer.Option(1e-7, "--start-lr", help="the rate of the first step")),
    "end_lr": (float, typer.Option(10.0, "--end-lr", help="the rate the ramp reaches at the last step")),
    "plot": (Path, typer.Option(None, "--plot", help="draw the curve to this PNG file (needs tlcore-viz)")),
}


def lr_find_command(
    overrides: dict, config_file: Path | None, steps: int, start_lr: float, end_lr: float, plot: Path | None
) -> None:
    """LR range test: train a fresh model at exponentially growing rates and suggest one; writes no run folder.

    Takes every option of `tlcore run` (the same data, pipeline, freeze policy, parameter groups and loss);
    --lr is not used. `tlcore run --lr auto` runs this first and trains at the suggestion.
    """
    from tlcore.cli import resolved_config
    from tlcore.lr_find import check_plot, check_range, find_lr, plot_finding, render_finding
    from tlcore.plugins import get_host
    from tlcore.train import started_processes

    check_range(start_lr, end_lr, steps)  # bad options fail before any model is built
    if plot is not None:
        check_plot(plot)
    config = resolved_config(overrides, config_file)
    with started_processes(config) as (world, device):
        finding = find_lr(config, get_host(), world, device, start_lr=start_lr, end_lr=end_lr, steps=steps)
    typer.echo(render_finding(finding))
    if plot is not None:
        plot_finding(finding, plot)
        typer.echo(f"curve drawn to {plot}")


def cv_command(overrides: dict, config_file: Path | None, resume: Path | None = None) -> None:
    """Cross-validation: train one run per stratified fold (--folds K) under one folder; mean and std of each metric."""
    from tlcore.cli import resolved_config
    from tlcore.cv import CV_FILE, render_summary, run_cv
    from tlcore.errors import ConfigError

    if resume is not None:
        if overrides or config_file is not None:
            raise ConfigError("--resume continues a cross-validation exactly as it was configured; give no other options")
        record = run_cv(resume=resume)
    else:
        record = run_cv(resolved_config(overrides, config_file))
    typer.echo(render_summary(record))
    typer.echo(f"per-fold runs and the summary: {Path(record['parent']) / CV_FILE}")


def push_command(
    run_dir: Path = typer.Argument(..., help="a run folder: its weights, model card (README.md) and config.json"),
    repo: str = typer.Option(..., "--repo", help="the Hugging Face Hub model repository, NAME or USER/NAME"),
    private: bool = typer.Option(False, "--private", help="create the repository as private (an existing one is kept)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the files that would be uploaded; send nothing"),
) -> None:
    """Upload a run's best weights, model card and configuration to the Hugging Face Hub (token: HF_TOKEN or hf login)."""
    from tlcore.push import files_to_push, push, render_plan

    plan = files_to_push(run_dir, repo)  # checks the folder and the name before any network use
    if dry_run:
        typer.echo(render_plan(plan))
        return
    url = push(plan, private=private)
    typer.echo(f"uploaded {', '.join(path.name for path in plan.files)} to {url}")


CV_RESUME = typer.Option(None, "--resume", help="continue the cross-validation in this folder: finished folds are kept")


def _warn(message: str) -> None:
    print(f"tlcore: warning: {message}", file=sys.stderr, flush=True)


@hookimpl
def tlcore_register_commands(app: typer.Typer) -> None:
    """Add the built-in commands: eval, predict, export, push (after training), lr-find (before) and cv."""
    from tlcore.cli import config_options  # here: tlcore.cli loads this module through the plugin host

    app.command("eval")(accepts_plugin_options(eval_command))  # with a flag per option plugins declare
    app.command("predict")(predict_command)
    app.command("export")(export_command)
    app.command("lr-find")(config_options(lr_find_command, LR_FIND_OPTIONS))
    app.command("cv")(config_options(cv_command, {"resume": (Path, CV_RESUME)}))
    app.command("push")(push_command)
