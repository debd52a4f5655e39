"""Building a run's pictures and report.html from its folder (and, at fit end, the live history).

The same function serves the fit-end callback and ``tlcore report RUN_DIR``.
``tlcore report`` evaluates the checkpoint on the split it validated on with
tlcore's own evaluation, so its numbers are the ones ``tlcore eval`` prints.
At the end of a run, the callback hands over the run's own validation pass of
the reported checkpoint's epoch instead (``evaluation=``): no image is scored a
second time, and the numbers are that epoch's val_acc and val_loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlcore import (
    DataError,
    EvalReport,
    PluginHost,
    Predictor,
    atomic_write_bytes,
    coverage_curve,
    evaluate_checkpoint,
    short_repr,
)
from tlcore_viz import multilabel, plots
from tlcore_viz.html import render_html

CURVES, CONFUSION, PREDICTIONS, TOP_LOSSES, REPORT = (
    "curves.png",
    "confusion.png",
    "predictions.png",
    "top_losses.png",
    "report.html",
)
CHECKPOINTS = ("best.safetensors", "last.safetensors")
RELIABILITY, COVERAGE, FOLDS = "reliability.png", "coverage.png", "folds.png"
CV_FILE = "cv.json"  # tlcore.cv.CV_FILE: the record `tlcore cv` keeps in the folder of its folds


@dataclass
class ReportResult:
    """What was written, and the evaluation behind it (None without a checkpoint)."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    evaluation: EvalReport | None = None
    notes: list[str] = field(default_factory=list)


_drawn: dict[str, bytes] = {}  # the last curves drawn, by their history as JSON: the report reuses them


def curves_png(history: list[dict[str, Any]]) -> bytes:
    """curves.png's bytes for ``history``; the history drawn last (by the epoch callback) is not drawn again."""
    key = json.dumps(history, sort_keys=True, default=repr)
    if key not in _drawn:
        _drawn.clear()
        _drawn[key] = plots.curves_png(history)
    return _drawn[key]


def write_curves(folder: Path, history: list[dict[str, Any]]) -> Path:
    """curves.png from the per-epoch metrics."""
    path = Path(folder) / CURVES
    atomic_write_bytes(path, curves_png(history))
    return path


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """config.json and metrics.jsonl of a run folder, checked; DataError naming the file and field when damaged.

    Valid JSON of the wrong shape (a list for config.json, an epoch as a
    string, a loss as an object) is refused here, before anything draws it.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder} is not a run folder: it has no config.json")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        lines = (
            (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if (folder / "metrics.jsonl").exists()
            else []
        )
        history = [json.loads(line) for line in lines if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise DataError(f"{folder} has a damaged config.json or metrics.jsonl: {reason}") from error
    _check_config(config, folder / "config.json")
    for number, metrics in enumerate(history, start=1):
        _check_metrics(metrics, number, folder / "metrics.jsonl")
    return config, history


# metrics.jsonl keys the report draws or prints: numbers where present; the val_ ones on every line
NUMERIC_METRICS = (
    "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_second", "seconds",
    "val_map", "val_f1_micro", "val_f1_macro",  # multilabel runs
)
REQUIRED_METRICS = ("val_loss", "val_acc")

def _check_config(config: Any, path: Path) -> None:
    """config.json as a run writes it: an object whose config, resolved, versions and plugins are objects."""
    if not isinstance(config, dict):
        raise DataError(f"{path} is damaged: it must hold a JSON object, got {short_repr(config)}")
    for key in ("config", "resolved", "versions", "plugins"):
        if key in config and not isinstance(config[key], dict):
            raise DataError(f"{path} is damaged: {key} must be an object, got {short_repr(config[key])}")
    classes = config.get("resolved", {}).get("classes", [])
    if not isinstance(classes, list):
        raise DataError(f"{path} is damaged: resolved.classes must be a list, got {short_repr(classes)}")


def _check_metrics(metrics: Any, number: int, path: Path) -> None:
    """One line of metrics.jsonl: an object with an integer epoch >= 1 and numbers where the report reads them."""
    where = f"{path} line {number}"
    if not isinstance(metrics, dict):
        raise DataError(f"{where} is damaged: it must be a JSON object, got {short_repr(metrics)}")
    epoch = metrics.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise DataError(f"{where} is damaged: epoch must be an integer from 1, got {short_repr(epoch)}")
    for key in NUMERIC_METRICS:
        value = metrics.get(key)
        if key in REQUIRED_METRICS and value is None:
            raise DataError(f"{where} is damaged: it has no {key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{where} is damaged: {key} must be a number, got {short_repr(value)}")


def build_report(
    folder: Path,
    history: list[dict[str, Any]] | None = None,
    model: Predictor | None = None,
    device: str = "auto",
    host: PluginHost | None = None,
    batch_size: int = 64,
    evaluation: EvalReport | None = None,
    split: str | None = None,
) -> ReportResult:
    """Write curves.png, confusion.png, predictions.png, top_losses.png and report.html into a run folder.

    A multi-label evaluation writes per_class.png and pr_curves.png instead of
    confusion.png and the calibration figures (:func:`evaluation_figures`).

    ``history`` defaults to metrics.jsonl. The figures show ``evaluation``
    when given (the run's own validation pass, :meth:`EvalReport.from_validation`:
    nothing is evaluated); else the model evaluated is ``model`` when given,
    else the folder's best (or last) checkpoint. Without any of them, only the
    curves and the report's run summary are written. ``split`` is the split
    evaluated (val, train, test or all; None: the one it validated on), as
    ``tlcore eval --split`` takes it.
    """
    folder = Path(folder)
    config, recorded = read_run(folder)
    history = recorded if history is None else history
    result = ReportResult(folder)
    images: dict[str, bytes] = {}
    if history:
        images[CURVES] = curves_png(history)
    checkpoint = model or next((folder / name for name in CHECKPOINTS if (folder / name).is_file()), None)
    if evaluation is None and checkpoint is None:
        result.notes.append("no checkpoint in the run folder: the evaluation figures were skipped")
    else:
        if evaluation is None:
            evaluation = evaluate_checkpoint(checkpoint, batch_size=batch_size, device=device, host=host, split=split)
        result.evaluation = evaluation
        images.update(evaluation_figures(evaluation))
    for name, data in images.items():
        atomic_write_bytes(folder / name, data)
        result.written.append(folder / name)
    page = render_html(folder, config, history, result.evaluation, images, result.notes)
    atomic_write_bytes(folder / REPORT, page.encode("utf-8"))
    result.written.append(folder / REPORT)
    return result


def evaluation_figures(evaluation: EvalReport) -> dict[str, bytes]:
    """The confusion matrix, a grid of validation images with predictions, and the highest-loss images.

    A multi-label evaluation (``evaluation.multilabel``) has no confusion matrix and no calibration: per-class
    AP/precision/recall/F1 and precision-recall curves instead (:mod:`tlcore_viz.multilabel`), and grids titled
    with the predicted and true label sets, an image in red unless its predicted set is exactly the true one.
    """
    if evaluation.multilabel is not None:
        return _multilabel_figures(evaluation)
    metrics, outputs = evaluation.metrics, evaluation.outputs
    classes = metrics.classes
    total = len(outputs.labels)
    # evenly spread over the split: sorted splits would otherwise show one class only
    spread = torch.linspace(0, total - 1, min(plots.GRID_IMAGES, total)).round().long().unique().tolist()
    worst = outputs.losses.topk(min(plots.GRID_IMAGES, total)).indices.tolist()

    def grid(indices: list[int], heading: str, with_loss: bool) -> bytes:
        images, titles, correct = [], [], []
        for index in indices:
            predicted, true = int(outputs.predictions[index]), int(outputs.labels[index])
            title = f"{_cut(classes[predicted])} ({float(outputs.confidence[index]):.0%})\ntrue: {_cut(classes[true])}"
            if with_loss:
                title += f"  loss {float(outputs.losses[index]):.2f}"
            images.append(evaluation.data[index][0])
            titles.append(title)
            correct.append(predicted == true)
        return plots.image_grid_png(images, titles, correct, heading)

    split = f"{evaluation.split} split"
    figures = {
        CONFUSION: plots.confusion_png(metrics.confusion, classes),
        PREDICTIONS: grid(spread, f"predicted (probability) and true class, {split}; mistakes in red", False),
        TOP_LOSSES: grid(worst, f"the {len(worst)} highest losses, {split}", True),
    }
    return {**figures, **calibration_figures(evaluation)}


def _multilabel_figures(evaluation: EvalReport) -> dict[str, bytes]:
    """per_class.png, pr_curves.png, and the prediction and top-loss grids of a multi-label evaluation."""
    outputs = evaluation.outputs
    correct = outputs.correct  # exact match: the predicted label set is the true one
    total = len(outputs.losses)
    spread = torch.linspace(0, total - 1, min(plots.GRID_IMAGES, total)).round().long().unique().tolist()
    worst = outputs.losses.topk(min(plots.GRID_IMAGES, total)).indices.tolist()

    def grid(indices: list[int], heading: str, with_loss: bool) -> bytes:
        images = [evaluation.data[index][0] for index in indices]
        titles = [multilabel.grid_title(evaluation, index, with_loss) for index in indices]
        return plots.image_grid_png(images, titles, [bool(correct[index]) for index in indices], heading)

    split = f"{evaluation.split} split"
    return {
        **multilabel.multilabel_figures(evaluation),
        PREDICTIONS: grid(spread, f"predicted (probability) and true labels, {split}; not exactly right in red", False),
        TOP_LOSSES: grid(worst, f"the {len(worst)} highest losses (binary cross-entropy), {split}", True),
    }


def calibration_figures(evaluation: EvalReport) -> dict[str, bytes]:
    """The reliability diagram (before and after temperature scaling) and the coverage-accuracy curve.

    Both from the calibrated probabilities of the evaluation (none when it has none). The curve shows, for
    every --reject-below threshold, the share of images answered and the accuracy on them.
    """
    calibration = evaluation.calibration()
    outputs = evaluation.outputs
    if calibration is None or outputs.calibrated_confidence is None:
        return {}
    calibrated = calibration["temperature"] != 1.0
    reliability = plots.reliability_png(
        calibration["reliability_before"],
        calibration["reliability_after"] if calibrated else None,
        calibration["temperature"],
    )
    curve = coverage_curve(outputs.calibrated_confidence, outputs.correct)
    coverage = plots.coverage_png([c.threshold for c in curve], [c.coverage for c in curve], [c.accuracy for c in curve])
    return {RELIABILITY: reliability, COVERAGE: coverage}


def read_folds(parent: Path) -> dict[int, list[dict[str, Any]]]:
    """Fold number -> per-epoch metrics of each finished fold in ``parent/cv.json``; DataError when damaged."""
    path = Path(parent) / CV_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DataError(f"{path} cannot be read: {type(error).__name__}") from None
    completed = record.get("completed") if isinstance(record, dict) else None
    if not isinstance(completed, dict):
        raise DataError(f"{path} is damaged: it has no completed folds object")
    folds = {}
    for key, fold in completed.items():
        history = fold.get("history") if isinstance(fold, dict) else None
        if not key.isdigit() or len(key) > 6 or not isinstance(history, list):
            raise DataError(f"{path} is damaged: completed fold {key[:20]!r} has no history list")
        for number, metrics in enumerate(history, start=1):
            _check_metrics(metrics, number, path)
        folds[int(key)] = history
    return folds


def write_folds_figure(parent: Path, current: tuple[int, list[dict[str, Any]]] | None = None) -> Path | None:
    """folds.png in a cross-validation folder: every finished fold's validation curves (and ``current``'s).

    ``current`` is (fold number, history) of a fold that has just ended and is not yet in cv.json.
    None when there is nothing to draw.
    """
    parent = Path(parent)
    folds = read_folds(parent) if (parent / CV_FILE).is_file() else {}
    if current is not None:
        folds[current[0]] = current[1]
    if not folds:
        return None
    atomic_write_bytes(parent / FOLDS, plots.folds_png([folds[k] for k in sorted(folds)]))
    return parent / FOLDS


def _cut(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
