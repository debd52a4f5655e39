"""The figures, drawn headless: matplotlib ``Figure`` objects rendered by Agg to PNG bytes.

pyplot is never imported, so no GUI backend is chosen and a user's own
matplotlib state is left alone. Each function returns PNG bytes; callers
write them atomically.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from tlcore import to_rgb

GRID_IMAGES = 16  # images in the prediction and top-loss grids
THUMBNAIL = 160  # longest side of an image in a grid, in pixels
CONFUSION_ANNOTATE_MAX = 20  # counts are written in the cells up to this many classes
CONFUSION_TICKS_MAX = 40  # class names label the axes up to this many classes
RIGHT, WRONG = "#1a7f37", "#cf222e"


def _literal_text(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw with every string taken literally: a class named ``price $\\frac{1}{$`` is shown, never parsed as math.

    Matplotlib reads ``$...$`` as mathtext (and fails on unbalanced input); the
    setting applies to every text artist the figure creates, tick labels
    drawn at save time included, and the user's own rcParams are restored after.
    """

    @functools.wraps(draw)
    def literal(*args: Any, **kwargs: Any) -> bytes:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return literal


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


MULTILABEL_CURVES = (("val_map", "val mAP"), ("val_f1_micro", "val F1 micro"), ("val_f1_macro", "val F1 macro"))


@_literal_text
def curves_png(history: Sequence[dict[str, Any]]) -> bytes:
    """Loss, accuracy and learning rate per epoch (train and val), side by side.

    A multi-label run's history (any epoch with ``val_map``) gets a fourth
    panel, val mAP and F1 micro/macro, and its accuracy is titled as the
    subset accuracy (exact match at 0.5) it is.
    """
    multilabel = any("val_map" in m for m in history)
    figure = _figure(16 if multilabel else 12, 3.6)
    epochs = [m["epoch"] for m in history]
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "val")]),
        (
            "subset accuracy (exact match at 0.5)" if multilabel else "accuracy",
            [("train_acc", "train"), ("val_acc", "val")],
        ),
        ("learning rate (end of epoch)", [("lr", "lr")]),
    ]
    if multilabel:
        panels.insert(2, ("mAP and F1 (validation)", list(MULTILABEL_CURVES)))
    axes = figure.subplots(1, len(panels))
    for axis, (title, series) in zip(axes, panels, strict=True):
        for key, label in series:
            values = [_finite(m.get(key)) for m in history]
            if any(not math.isnan(v) for v in values):
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend()
        if epochs:
            axis.set_xticks(epochs if len(epochs) <= 12 else np.linspace(epochs[0], epochs[-1], 12).round().astype(int))
    axes[-1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return _png(figure)


def _finite(value: Any) -> float:
    """A metric as a float to draw; NaN (a gap in the line) for a missing one or one that is not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


@_literal_text
def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """The confusion matrix, coloured by each true class's share (row-normalised), with counts in the cells."""
    matrix = np.asarray(confusion, dtype=np.int64)
    count = len(classes)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.45 * count, 22)
    figure = _figure(side + 1.2, side)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"confusion matrix ({int(matrix.sum())} images)")
    if count <= CONFUSION_TICKS_MAX:
        axis.set_xticks(range(count), [_short(c) for c in classes], rotation=90)
        axis.set_yticks(range(count), [_short(c) for c in classes])
    if count <= CONFUSION_ANNOTATE_MAX:
        for row in range(count):
            for column in range(count):
                colour = "white" if shares[row, column] > 0.6 else "black"
                axis.text(column, row, str(matrix[row, column]), ha="center", va="center", color=colour, fontsize=9)
    return _png(figure)


@_literal_text
def image_grid_png(images: Sequence[Any], titles: Sequence[str], correct: Sequence[bool], heading: str) -> bytes:
    """A grid of raw images (PIL or uint8 tensors) with titles; mistakes in red with a red frame, hits in green."""
    count = max(len(images), 1)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure = _figure(3.0 * columns, 3.2 * rows + 0.4)
    figure.suptitle(heading)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axis in axes:
        axis.set_axis_off()
    for axis, image, title, right in zip(axes, images, titles, correct, strict=False):
        axis.imshow(thumbnail(image))
        axis.set_title(title, fontsize=9, color=RIGHT if right else WRONG)
        if not right:  # a visible frame: mistakes stand out even in grey print
            axis.set_axis_on()
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_color(WRONG)
                spine.set_linewidth(3)
    return _png(figure)


def thumbnail(image: Any) -> np.ndarray:
    """A raw dataset image as an RGB array whose longest side is at most THUMBNAIL pixels."""
    rgb = to_rgb(image)
    if rgb.is_floating_point():
        rgb = (rgb.clamp(0, 1) * 255).to(torch.uint8)
    picture = Image.fromarray(rgb.permute(1, 2, 0).numpy())
    if max(picture.size) > THUMBNAIL:
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
    elif max(picture.size) < 64:  # tiny images (8x8 digits): blow up without smoothing so pixels stay crisp
        scale = 64 // max(picture.size)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return np.asarray(picture)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


@_literal_text
def reliability_png(before: dict[str, Any], after: dict[str, Any] | None, temperature: float) -> bytes:
    """Reliability diagram: accuracy against mean confidence per bin, before and after temperature scaling.

    ``before`` and ``after`` are :meth:`tlcore.calibration.ReliabilityBins.to_dict` records (edges, counts,
    confidence, accuracy, ece); bars are the bins' accuracy, the diagonal is perfect calibration, and the
    bar heights' gap to it (weighted by the bin's images) is the ECE. ``after`` None: one panel.
    """
    panels = [("uncalibrated", before)] + ([(f"temperature {temperature:.3g}", after)] if after is not None else [])
    figure = _figure(4.6 * len(panels), 4.4)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (title, bins) in zip(axes, panels, strict=True):
        edges = np.asarray(bins["edges"], dtype=float)
        width = edges[1:] - edges[:-1]
        counts = np.asarray(bins["counts"])
        accuracy = np.where(counts > 0, bins["accuracy"], np.nan)
        confidence = np.where(counts > 0, bins["confidence"], np.nan)
        axis.bar(edges[:-1], np.nan_to_num(accuracy), width=width, align="edge", edgecolor="#1f2328", alpha=0.75,
                 label="accuracy")
        axis.plot(confidence, accuracy, "o", color=WRONG, markersize=4, label="mean confidence (x)")
        axis.plot([0, 1], [0, 1], "--", color="#57606a", label="perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{title}: ECE {bins['ece']:.4f} ({len(counts)} bins)")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    return _png(figure)


@_literal_text
def coverage_png(thresholds: Sequence[float], coverage: Sequence[float], accuracy: Sequence[float | None]) -> bytes:
    """Coverage and accuracy on the answered images against the rejection threshold (--reject-below)."""
    figure = _figure(6.4, 4.0)
    axis = figure.subplots()
    axis.plot(thresholds, coverage, label="coverage (share answered)")
    axis.plot(thresholds, [math.nan if a is None else a for a in accuracy], label="accuracy on the answered")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("--reject-below (calibrated probability)")
    axis.set_title("answering only confident images: pick the threshold")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    return _png(figure)


@_literal_text
def folds_png(histories: Sequence[Sequence[dict[str, Any]]]) -> bytes:
    """Cross-validation: validation loss and accuracy per epoch, one line per fold (multi-label folds: and val_map)."""
    keys = ["val_loss", "val_acc"]
    if any("val_map" in m for history in histories for m in history):
        keys.append("val_map")
    figure = _figure(5 * len(keys), 3.8)
    axes = figure.subplots(1, len(keys))
    for axis, key in zip(axes, keys, strict=True):
        for number, history in enumerate(histories, start=1):
            epochs = [m.get("epoch") for m in history]
            axis.plot(epochs, [_finite(m.get(key)) for m in history], marker="o", label=f"fold {number}")
        axis.set_title(f"{key} per fold")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _png(figure)


PER_CLASS_SCORES = (("ap", "AP"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"))


@_literal_text
def per_class_png(rows: Sequence[dict[str, Any]], heading: str) -> bytes:
    """Multi-label: AP, precision, recall and F1 of each class as grouped horizontal bars, first row on top.

    ``rows``: :meth:`tlcore.multilabel.MultilabelMetrics.per_class` records
    (class, ap, precision, recall, f1, support; ap None for a class with no
    positive image, drawn as no bar and said in its label). Values in [0, 1].
    """
    count = max(len(rows), 1)
    figure = _figure(9, 1.4 + 0.55 * count)
    axis = figure.subplots()
    height = 0.8 / len(PER_CLASS_SCORES)
    for offset, (key, label) in enumerate(PER_CLASS_SCORES):
        values = [math.nan if row[key] is None else float(row[key]) for row in rows]
        positions = [i - 0.4 + height * (offset + 0.5) for i in range(len(rows))]
        axis.barh(positions, np.nan_to_num(values), height=height, label=label)
    names = [
        f"{_short(row['class'])} ({row['support']})" + (" no positives" if row["ap"] is None else "") for row in rows
    ]
    axis.set_yticks(range(len(rows)), names)
    axis.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    axis.set_xlim(0, 1)
    axis.set_xlabel("score (precision, recall, F1 at each class's threshold)")
    axis.set_ylabel("class (positive images)")
    axis.set_title(heading)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    return _png(figure)


@_literal_text
def pr_curves_png(curves: Sequence[dict[str, Any]], heading: str) -> bytes:
    """Multi-label: precision against recall for some classes, with each class's operating point at its threshold.

    ``curves``: records with name, recall and precision (sequences of equal
    length, recall ascending from 0; the curve is the step function whose
    area is the AP), ap, and point: (recall, precision) at the class's
    threshold, or None.
    """
    figure = _figure(7.2, 5.6)
    axis = figure.subplots()
    for curve in curves:
        label = f"{_short(curve['name'])} (AP {curve['ap']:.3f})"
        (line,) = axis.step(curve["recall"], curve["precision"], where="pre", label=label)
        if curve.get("point") is not None:
            axis.plot(*curve["point"], "o", color=line.get_color(), markersize=6)
    axis.set_xlim(0, 1.01)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(heading)
    axis.grid(alpha=0.3)
    if curves:
        axis.legend(loc="lower left", fontsize=8, title="dot: the class's threshold", title_fontsize=8)
    return _png(figure)
