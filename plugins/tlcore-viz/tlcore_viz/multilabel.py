"""What the report shows of a multi-label evaluation (``EvalReport.task`` "multilabel"), in place of the
confusion matrix and the reliability diagram: per-class scores and precision-recall curves.

Choosing what to draw lives here (which classes, the curves' points, the
grid titles); :mod:`tlcore_viz.plots` draws. Shapes follow
:class:`tlcore.evaluation.Outputs` in its multi-label form: logits and
labels ``[N, C]``, predictions bool ``[N, C]``.
"""

from __future__ import annotations

import textwrap
from typing import Any

import torch

from tlcore import EvalReport
from tlcore_viz import plots

PER_CLASS, PR_CURVES = "per_class.png", "pr_curves.png"
PER_CLASS_MAX = 30  # classes in the per-class chart; beyond, the ones with the lowest AP (report.html lists every one)
PR_CURVES_MAX = 8  # precision-recall curves drawn; beyond, the best and the worst by AP
LABELS_SHOWN = 3  # labels named in a grid title; beyond, "+k"
TITLE_WIDTH = 34  # characters per line of a grid title, about the width of a grid image at its font size


def precision_recall_curve(scores: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """The precision-recall curve of one class: (recall, precision), recall ascending from (0, 1).

    ``scores`` ``[N]`` (probabilities or logits: only their order counts),
    ``targets`` ``[N]`` 0/1. One point per distinct score, predicting every
    image scored at least that high (tied scores enter together). Drawn as
    a step that holds each point's precision back to the previous recall, its
    area is the class's average precision (:func:`tlcore.multilabel.average_precision`).
    Raises ValueError when the class has no positive image (no recall exists).
    """
    scores, hits = scores.double().flatten(), (targets.flatten() > 0.5).double()
    positives = hits.sum()
    if positives == 0:
        raise ValueError("a class without a positive image has no precision-recall curve")
    order = torch.argsort(scores, descending=True, stable=True)
    ranked, true_pos = scores[order], torch.cumsum(hits[order], 0)
    last = torch.ones(len(ranked), dtype=torch.bool)
    last[:-1] = ranked[1:] != ranked[:-1]  # the end of each run of tied scores
    taken = torch.arange(1, len(ranked) + 1, dtype=torch.float64)[last]
    recall, precision = true_pos[last] / positives, true_pos[last] / taken
    return [0.0, *recall.tolist()], [1.0, *precision.tolist()]


def worst_classes(rows: list[dict[str, Any]], limit: int = PER_CLASS_MAX) -> tuple[list[dict[str, Any]], str]:
    """The per-class records to chart and what they are: all of them when few, else the ``limit`` lowest by AP.

    ``rows``: :meth:`tlcore.multilabel.MultilabelMetrics.per_class` records. Classes without a positive image
    (AP None) come after every AP; ties keep the class order.
    """
    if len(rows) <= limit:
        return rows, f"{len(rows)} classes"
    ordered = sorted(rows, key=lambda row: float("inf") if row["ap"] is None else row["ap"])
    return ordered[:limit], f"the {limit} of {len(rows)} classes with the lowest AP"


def curve_classes(ap: list[float | None], limit: int = PR_CURVES_MAX) -> tuple[list[int], str]:
    """Class indices to draw precision-recall curves for, and what they are.

    Only classes with a positive image have a curve. All of them when at most ``limit``; else the
    ``limit // 2`` highest and the rest lowest by AP, highest first (ties: class order).
    """
    present = [i for i, value in enumerate(ap) if value is not None]
    skipped = len(ap) - len(present)
    without = f"; {skipped} without a positive image" if skipped else ""
    if len(present) <= limit:
        return present, f"{len(present)} classes{without}"
    ordered = sorted(present, key=lambda i: -ap[i])  # type: ignore[operator]
    best = limit // 2
    return ordered[:best] + ordered[len(ordered) - (limit - best):], (
        f"the {best} best and {limit - best} worst of {len(present)} classes by AP{without}"
    )


def label_names(row: torch.Tensor, classes: list[str], probabilities: torch.Tensor | None = None) -> str:
    """The classes set in a bool row ``[C]``, highest probability first when given, at most LABELS_SHOWN named."""
    indices = row.nonzero().flatten().tolist()
    if probabilities is not None:
        indices.sort(key=lambda i: -float(probabilities[i]))
    if not indices:
        return "(none)"
    named = [
        _cut(classes[i]) + (f" {float(probabilities[i]):.0%}" if probabilities is not None else "")
        for i in indices[:LABELS_SHOWN]
    ]
    extra = len(indices) - LABELS_SHOWN
    return ", ".join(named) + (f" +{extra}" if extra > 0 else "")


def multilabel_figures(evaluation: EvalReport) -> dict[str, bytes]:
    """per_class.png and pr_curves.png of a multi-label evaluation (``evaluation.multilabel`` set).

    The bars and the curves' dots are at the thresholds the evaluation used
    (the checkpoint's); the curves sweep every threshold.
    """
    metrics, outputs = evaluation.multilabel, evaluation.outputs
    assert metrics is not None and outputs.logits is not None  # a multilabel report (EvalReport.task)
    classes = metrics.classes
    split = f"{evaluation.split} split, {metrics.images} images"
    rows, which = worst_classes(metrics.per_class())
    chosen, drawn = curve_classes(metrics.ap)
    curves = []
    for index in chosen:
        recall, precision = precision_recall_curve(outputs.logits[:, index], outputs.labels[:, index])
        point = (metrics.recall[index], metrics.precision[index]) if metrics.predicted[index] else None
        curves.append(
            {"name": classes[index], "recall": recall, "precision": precision, "ap": metrics.ap[index], "point": point}
        )
    return {
        PER_CLASS: plots.per_class_png(rows, f"per class at the thresholds: {which} ({split})"),
        PR_CURVES: plots.pr_curves_png(curves, f"precision-recall: {drawn} ({split})"),
    }


def grid_title(evaluation: EvalReport, index: int, with_loss: bool) -> str:
    """An image's title in the multi-label grids: predicted labels with their probabilities, the true ones, the loss."""
    outputs = evaluation.outputs
    assert evaluation.multilabel is not None and outputs.logits is not None
    classes = evaluation.multilabel.classes
    probabilities = torch.sigmoid(outputs.logits[index].double())
    predicted = label_names(outputs.predictions[index], classes, probabilities)
    true = "true: " + label_names(outputs.labels[index] > 0.5, classes)
    true += f"  loss {float(outputs.losses[index]):.2f}" if with_loss else ""
    return "\n".join(textwrap.fill(line, TITLE_WIDTH) for line in (predicted, true))  # within the image's width


def _cut(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
