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
        parts.append("<h2>Per class</h2>" + _per_class(evaluation))
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
    if history:
        best = max(history, key=lambda m: m.get("val_acc", float("-inf")))
        last = history[-1]
        rows.append(("epochs run", str(last["epoch"])))
        rows.append(("best epoch", f"{best['epoch']}: val_acc {best['val_acc']:.4f}, val_loss {best['val_loss']:.4f}"))
        rows.append(("last epoch", f"{last['epoch']}: val_acc {last['val_acc']:.4f}, val_loss {last['val_loss']:.4f}"))
    if evaluation is not None:
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


def _epochs(history: list[dict]) -> str:
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_second", "seconds"]
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
