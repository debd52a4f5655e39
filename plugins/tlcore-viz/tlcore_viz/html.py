"""report.html: one self-contained page (images inlined as base64) about one run."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from tlcore import EvalReport

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#1f2328}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;border-bottom:1px solid #eaeef2;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #eaeef2}
.note{color:#9a6700}
"""
FIGURES = (
    ("curves.png", "Training curves"),
    ("confusion.png", "Confusion matrix"),
    ("per_class.png", "Per class: AP, and precision, recall, F1 at each class's threshold"),
    ("pr_curves.png", "Precision-recall curves (dot: the class's threshold)"),
    ("predictions.png", "Predictions"),
    ("top_losses.png", "Top losses"),
    ("reliability.png", "Reliability diagram (calibration)"),
    ("coverage.png", "Coverage and accuracy by rejection threshold (--reject-below)"),
)


def render_html(
    folder: Path,
    config: dict[str, Any],
    history: list[dict[str, Any]],
    evaluation: EvalReport | None,
    images: dict[str, bytes],
    notes: list[str],
) -> str:
    """The whole page as a string."""
    settings = config.get("config", {})
    resolved = config.get("resolved", {})
    title = f"tlcore run {folder.name}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"]
    parts.append(f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>")
    parts.extend(f"<p class='note'>{escape(note)}</p>" for note in notes)
    parts.append("<h2>Summary</h2>" + _table(_summary(settings, resolved, history, evaluation)))
    for name, heading in FIGURES:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            parts.append(f"<h2>{heading}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    if evaluation is not None:
        per_class = _multilabel_per_class(evaluation) if evaluation.multilabel is not None else _per_class(evaluation)
        parts.append("<h2>Per class</h2>" + per_class)
    if history:
        parts.append("<h2>Epochs</h2>" + _epochs(history))
    parts.append("<h2>Configuration</h2>" + _table([(k, _plain(v)) for k, v in settings.items()]))
    versions = {**config.get("versions", {}), **{f"plugin {k}": v for k, v in config.get("plugins", {}).items()}}
    parts.append("<h2>Versions</h2>" + _table([(k, _plain(v)) for k, v in versions.items()]))
    parts.append("</body></html>\n")
    return "".join(parts)


def _summary(settings: dict, resolved: dict, history: list[dict], evaluation: EvalReport | None) -> list[tuple[str, str]]:
    rows = [
        ("backbone", f"{settings.get('backbone')} (weights: {resolved.get('weights', settings.get('weights'))})"),
        (
            "dataset",
            f"{settings.get('dataset')}, {len(resolved.get('classes', []))} classes, "
            f"{resolved.get('train_images')} train / {resolved.get('val_images')} val images",
        ),
        ("image size, device", f"{resolved.get('image_size')} px, {resolved.get('device')}"),
    ]
    if history and _multilabel_history(history):
        rows += _multilabel_epochs(history)
    elif history:
        best = max(history, key=lambda m: m.get("val_acc", float("-inf")))
        last = history[-1]
        rows.append(("epochs run", str(last["epoch"])))
        rows.append(("best epoch", f"{best['epoch']}: val_acc {best['val_acc']:.4f}, val_loss {best['val_loss']:.4f}"))
        rows.append(("last epoch", f"{last['epoch']}: val_acc {last['val_acc']:.4f}, val_loss {last['val_loss']:.4f}"))
    if evaluation is not None and evaluation.multilabel is not None:
        rows += _multilabel_evaluation(evaluation)
    elif evaluation is not None:
        m = evaluation.metrics
        top5 = f", top-5 {m.top5_accuracy:.4f}" if m.top5_accuracy is not None else ""
        rows.append(
            (
                "evaluated",
                f"{evaluation.checkpoint} (epoch {evaluation.epoch}) on the {evaluation.split} split, {m.images} images",
            )
        )
        rows.append(("accuracy", f"{m.accuracy:.4f} ({m.correct}/{m.images}){top5}, loss {m.loss:.4f}"))
        macro = m.macro
        rows.append(
            ("macro precision / recall / F1", f"{macro['precision']:.4f} / {macro['recall']:.4f} / {macro['f1']:.4f}")
        )
        calibration = evaluation.calibration()
        if calibration is not None:
            rows.append(
                (
                    "calibration",
                    f"temperature {calibration['temperature']:.4g}; ECE ({calibration['bins']} bins) "
                    f"{calibration['ece_before']:.4f} before, {calibration['ece_after']:.4f} after",
                )
            )
    return rows


def _per_class(evaluation: EvalReport) -> str:
    rows = ["<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    for row in evaluation.metrics.per_class:
        cells = "".join(f"<td class='n'>{row[k]:.4f}</td>" for k in ("precision", "recall", "f1"))
        rows.append(f"<tr><td>{escape(row['class'])}</td>{cells}<td class='n'>{row['support']}</td></tr>")
    return "".join(rows) + "</table>"


def _multilabel_history(history: list[dict]) -> bool:
    """A multi-label run's metrics: they carry val_map, its selection metric (as tlcore.ema.selection_metric says)."""
    return any("val_map" in m for m in history)


def _multilabel_epochs(history: list[dict]) -> list[tuple[str, str]]:
    """Summary rows of a multi-label run's epochs: the best is the one with the highest val_map (NaN ranks lowest)."""
    best = max(history, key=lambda m: _rank(m.get("val_map")))
    last = history[-1]

    def scores(m: dict) -> str:
        return (
            f"{m['epoch']}: val_map {_score(m.get('val_map'))}, val_f1_micro {_score(m.get('val_f1_micro'))}, "
            f"val_f1_macro {_score(m.get('val_f1_macro'))}, val_acc (exact match) {_score(m.get('val_acc'))}, "
            f"val_loss {_score(m.get('val_loss'))}"
        )

    return [("epochs run", str(last["epoch"])), ("best epoch (highest val_map)", scores(best)), ("last epoch", scores(last))]


def _multilabel_evaluation(evaluation: EvalReport) -> list[tuple[str, str]]:
    """Summary rows of a multi-label evaluation: mAP, F1, subset accuracy, and how a class is predicted."""
    m = evaluation.multilabel
    assert m is not None
    present = sum(1 for ap in m.ap if ap is not None)
    return [
        (
            "evaluated",
            f"{evaluation.checkpoint} (epoch {evaluation.epoch}) on the {evaluation.split} split, {m.images} images",
        ),
        ("task", "multi-label: a sigmoid per class; class c is predicted when sigmoid(logit_c) >= threshold_c"),
        ("mAP", f"{_score(m.map)} (mean average precision over the {present} of {len(m.classes)} classes with a positive)"),
        ("F1 micro / macro", f"{_score(m.f1_micro)} / {_score(m.f1_macro)} at each class's threshold"),
        ("macro precision / recall", f"{_score(m.precision_macro)} / {_score(m.recall_macro)}"),
        ("subset accuracy", f"{_score(m.subset_accuracy)} (exact label set), loss {_score(m.loss)} (binary cross-entropy)"),
    ]


def _multilabel_per_class(evaluation: EvalReport) -> str:
    assert evaluation.multilabel is not None
    keys = ("threshold", "ap", "precision", "recall", "f1", "support", "predicted")
    heads = ("threshold", "AP", "precision", "recall", "F1", "positives", "predicted")
    rows = ["<table><tr><th>class</th>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"]
    for row in evaluation.multilabel.per_class():
        cells = "".join(f"<td class='n'>{_score(row[k])}</td>" for k in keys)
        rows.append(f"<tr><td>{escape(row['class'])}</td>{cells}</tr>")
    return "".join(rows) + "</table>"


def _rank(value: Any) -> float:
    """A metric to pick the best epoch by: missing or NaN ranks below every number."""
    return float(value) if isinstance(value, (int, float)) and value == value else float("-inf")


def _score(value: Any) -> str:
    """A score to 4 decimals, a count as is; n/a where undefined (None or NaN: no positive image)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) and value == value else "n/a"


def _epochs(history: list[dict]) -> str:
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_map", "val_f1_micro", "val_f1_macro"]
    keys += ["lr", "images_per_second", "seconds"]
    keys = [k for k in keys if any(k in m for m in history)]
    rows = ["<table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for metrics in history:
        rows.append("<tr>" + "".join(f"<td class='n'>{_number(metrics.get(k))}</td>" for k in keys) + "</tr>")
    return "".join(rows) + "</table>"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return escape(str(value)) if value is not None else ""


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"
