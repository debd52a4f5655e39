"""Building a run's pictures and report.html from its folder (and, at fit end, the live history).

The same function serves the fit-end callback and ``tlcore report RUN_DIR``:
the checkpoint is evaluated on the split it validated on with tlcore's own
evaluation, so the report's numbers are the ones ``tlcore eval`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlcore.errors import DataError
from tlcore.evaluation import EvalReport, evaluate_checkpoint
from tlcore.files import atomic_write_bytes
from tlcore.inference import Predictor
from tlcore.plugins import PluginHost
from tlcore_viz import plots
from tlcore_viz.html import render_html

CURVES, CONFUSION, PREDICTIONS, TOP_LOSSES, REPORT = (
    "curves.png",
    "confusion.png",
    "predictions.png",
    "top_losses.png",
    "report.html",
)
CHECKPOINTS = ("best.safetensors", "last.safetensors")


@dataclass
class ReportResult:
    """What was written, and the evaluation behind it (None without a checkpoint)."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    evaluation: EvalReport | None = None
    notes: list[str] = field(default_factory=list)


def write_curves(folder: Path, history: list[dict[str, Any]]) -> Path:
    """curves.png from the per-epoch metrics."""
    path = Path(folder) / CURVES
    atomic_write_bytes(path, plots.curves_png(history))
    return path


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """config.json and metrics.jsonl of a run folder; DataError when it is not one."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{folder} has a damaged config.json or metrics.jsonl: {error}") from error
    return config, history


def build_report(
    folder: Path,
    history: list[dict[str, Any]] | None = None,
    model: Predictor | None = None,
    device: str = "auto",
    host: PluginHost | None = None,
    batch_size: int = 64,
) -> ReportResult:
    """Write curves.png, confusion.png, predictions.png, top_losses.png and report.html into a run folder.

    ``history`` defaults to metrics.jsonl; the model evaluated is ``model``
    when given, else the folder's best (or last) checkpoint. Without either,
    only the curves and the report's run summary are written.
    """
    folder = Path(folder)
    config, recorded = read_run(folder)
    history = recorded if history is None else history
    result = ReportResult(folder)
    images: dict[str, bytes] = {}
    if history:
        images[CURVES] = plots.curves_png(history)
    checkpoint = model or next((folder / name for name in CHECKPOINTS if (folder / name).is_file()), None)
    if checkpoint is None:
        result.notes.append("no checkpoint in the run folder: the evaluation figures were skipped")
    else:
        evaluation = evaluate_checkpoint(checkpoint, batch_size=batch_size, device=device, host=host)
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
    """The confusion matrix, a grid of validation images with predictions, and the highest-loss images."""
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
    return {
        CONFUSION: plots.confusion_png(metrics.confusion, classes),
        PREDICTIONS: grid(spread, f"predicted (probability) and true class, {split}; mistakes in red", False),
        TOP_LOSSES: grid(worst, f"the {len(worst)} highest losses, {split}", True),
    }


def _cut(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
