"""Multi-label runs in the viz report: per-class scores and precision-recall curves instead of the confusion
matrix and the reliability diagram; mAP and F1 in report.html and the curves."""

import base64
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tlcore_viz import multilabel, plots, tensorboard
from tlcore_viz.callbacks import kept_evaluation
from tlcore_viz.html import render_html
from tlcore_viz.report import evaluation_figures

from tlcore import EvalReport
from tlcore.config import build_config
from tlcore.multilabel import average_precision
from tlcore.state import ValidationOutputs
from tlcore.testing import TINY_BACKBONE, TINY_MULTILABEL_DATASET, tagged_shapes_dataset
from tlcore.train import fit

MULTICLASS_ONLY = ("confusion.png", "reliability.png", "coverage.png")
MULTILABEL_FIGURES = ("per_class.png", "pr_curves.png", "predictions.png", "top_losses.png")


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # a truncated or corrupt PNG fails here
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_the_precision_recall_curve_is_the_step_function_whose_area_is_the_ap():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.1])
    targets = torch.tensor([1.0, 0, 1, 0])
    recall, precision = multilabel.precision_recall_curve(scores, targets)
    # 0.9: 1 of 1 right; 0.8 takes both tied images: 2 of 3; 0.1: 2 of 4
    assert recall == [0.0, 0.5, 1.0, 1.0]
    assert precision == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    area = sum((recall[k] - recall[k - 1]) * precision[k] for k in range(1, len(recall)))
    assert area == pytest.approx(5 / 6)
    assert area == pytest.approx(average_precision(scores[:, None], targets[:, None]).item())
    with pytest.raises(ValueError, match="without a positive image"):
        multilabel.precision_recall_curve(scores, torch.zeros(4))


def test_which_classes_are_charted_and_drawn():
    rows = [{"class": f"c{i}", "ap": ap} for i, ap in enumerate([0.9, None, 0.2, 0.5, 0.2])]
    assert multilabel.worst_classes(rows, limit=5) == (rows, "5 classes")
    shown, which = multilabel.worst_classes(rows, limit=3)
    assert [row["class"] for row in shown] == ["c2", "c4", "c3"]  # lowest AP first, ties in class order, None last
    assert which == "the 3 of 5 classes with the lowest AP"
    assert multilabel.curve_classes([0.9, None, 0.2], limit=8) == ([0, 2], "2 classes; 1 without a positive image")
    chosen, drawn = multilabel.curve_classes([0.1, 0.9, 0.5, 0.7, 0.3, None], limit=4)
    assert chosen == [1, 3, 4, 0] and drawn == "the 2 best and 2 worst of 5 classes by AP; 1 without a positive image"
    # nothing to draw a curve for, a class with no positive image and no prediction: still a picture, no error
    assert multilabel.curve_classes([None, None]) == ([], "0 classes; 2 without a positive image")
    assert png_size(plots.pr_curves_png([], "precision-recall: 0 classes")) == (720, 560)
    empty = {"class": "$never", "ap": None, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert png_size(plots.per_class_png([empty], "per class"))[1] >= 150


def test_grid_titles_name_the_predicted_labels_by_probability_and_the_true_ones():
    classes = ["cat", "dog", "bird", "fish", "a_very_long_class_name"]
    row = torch.tensor([True, True, False, True, True])
    probabilities = torch.tensor([0.6, 0.9, 0.1, 0.7, 0.55])
    assert multilabel.label_names(row, classes, probabilities) == "dog 90%, fish 70%, cat 60% +1"
    assert multilabel.label_names(torch.zeros(5, dtype=torch.bool), classes) == "(none)"
    assert multilabel.label_names(torch.tensor([False] * 4 + [True]), classes) == "a_very_long_c…"


def test_multilabel_curves_add_a_map_and_f1_panel_and_multiclass_keeps_three():
    history = [
        {"epoch": e, "train_loss": 0.7 / e, "val_loss": 0.8 / e, "train_acc": 0.1 * e, "val_acc": 0.1 * e, "lr": 1e-3,
         "val_map": 0.3 * e, "val_f1_micro": 0.25 * e, "val_f1_macro": float("nan")}
        for e in (1, 2)
    ]
    assert png_size(plots.curves_png(history)) == (1600, 360)
    single = [{k: v for k, v in m.items() if not k.startswith(("val_map", "val_f1"))} for m in history]
    assert png_size(plots.curves_png(single)) == (1200, 360)
    # cross-validation folds: a val_map panel beside val_loss and val_acc, a fold's missing mAP a gap
    assert png_size(plots.folds_png([history, [dict(history[0], val_map=None)]])) == (1500, 380)
    assert png_size(plots.folds_png([single])) == (1000, 380)


def hand_made_report(thresholds=(0.5, 0.5, 0.5)) -> EvalReport:
    """The validation pass of a made-up model on the tiny multi-label split (16 images, 3 classes):
    class 0 perfectly ranked, class 1 scored 0 everywhere (AP = its share of positives), class 2 upside down."""
    splits = tagged_shapes_dataset()
    labels = torch.stack([splits.val[i][1] for i in range(len(splits.val))])
    logits = torch.stack([labels[:, 0] * 4 - 2, torch.zeros(len(labels)), 2 - labels[:, 2] * 4], dim=1)
    validation = ValidationOutputs(3, logits, labels, torch.arange(len(labels)))
    return EvalReport.from_validation(
        validation, splits, checkpoint="best.safetensors", backbone="b", dataset=TINY_MULTILABEL_DATASET, data_dir=None,
        thresholds=list(thresholds),
    )


def test_a_multilabel_evaluation_draws_per_class_scores_and_curves_not_the_confusion_matrix():
    report = hand_made_report()
    scores = report.multilabel
    assert scores.ap[0] == 1.0 and scores.ap[1] == pytest.approx(scores.support[1] / 16) and scores.ap[2] < 0.7
    figures = evaluation_figures(report)
    assert sorted(figures) == sorted(MULTILABEL_FIGURES)
    for name, data in figures.items():
        width, height = png_size(data)
        assert width >= 300 and height >= 200, name
    title = multilabel.grid_title(report, 0, with_loss=True)
    truth = [name for name, hit in zip(scores.classes, report.outputs.labels[0] > 0.5, strict=True) if hit]
    lines = title.split("\n")  # wrapped at word boundaries
    assert "true: " + ", ".join(truth) + "  loss " in " ".join(lines) and max(map(len, lines)) <= multilabel.TITLE_WIDTH


def test_report_html_shows_map_f1_thresholds_and_per_class_ap(tmp_path):
    report = hand_made_report(thresholds=(0.5, 0.25, 0.75))
    scores = report.multilabel
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "train_acc": 0.1, "val_acc": 0.6, "val_map": 0.5,
         "val_f1_micro": 0.4, "val_f1_macro": 0.3, "lr": 0.001},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.7, "train_acc": 0.2, "val_acc": 0.4, "val_map": 0.75,
         "val_f1_micro": 0.6, "val_f1_macro": 0.55, "lr": 0.001},
    ]
    images = evaluation_figures(report)
    page = render_html(tmp_path, {"config": {"task": "multilabel"}}, history, report, images, [])
    # the best epoch is the highest val_map (epoch 1 has the higher val_acc)
    assert "<th>best epoch (highest val_map)</th><td>2: val_map 0.7500, val_f1_micro 0.6000, val_f1_macro 0.5500" in page
    assert f"<th>mAP</th><td>{scores.map:.4f} (mean average precision over the 3 of 3 classes" in page
    assert f"<th>F1 micro / macro</th><td>{scores.f1_micro:.4f} / {scores.f1_macro:.4f} at each class" in page
    assert "sigmoid(logit_c) &gt;= threshold_c" in page
    assert "<tr><td>top_left</td><td class='n'>0.5000</td><td class='n'>1.0000</td>" in page  # threshold, AP 1
    assert "<tr><td>top_right</td><td class='n'>0.2500</td>" in page and "<td>bottom_right</td><td class='n'>0.7500" in page
    for name in MULTILABEL_FIGURES:
        assert f"src='data:image/png;base64,{base64.b64encode(images[name]).decode()}'" in page
    assert "Confusion matrix" not in page and "Reliability" not in page and "<th>accuracy</th>" not in page
    assert "<th>val_map</th><th>val_f1_micro</th><th>val_f1_macro</th>" in page  # the epochs table


def test_a_multilabel_run_and_tlcore_report_draw_the_multilabel_figures(viz_host, viz_cli, tmp_path, capsys):
    config = build_config(
        overrides=dict(
            backbone=TINY_BACKBONE, dataset=TINY_MULTILABEL_DATASET, task="multilabel", weights="none", epochs=2,
            batch_size=8, lr=0.003, output=str(tmp_path / "run"), callbacks="-progress",
        )
    )
    result = fit(config, viz_host)
    folder = Path(result.output_dir)
    for name in (*MULTILABEL_FIGURES, "curves.png"):
        png_size((folder / name).read_bytes())
    assert not any((folder / name).exists() for name in MULTICLASS_ONLY)
    assert png_size((folder / "curves.png").read_bytes()) == (1600, 360)
    best = max(result.history, key=lambda m: m["val_map"])
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert f"<th>best epoch (highest val_map)</th><td>{best['epoch']}: val_map {best['val_map']:.4f}" in page
    # drawn from the run's own validation pass of the best epoch, at its thresholds: the very val_map and F1
    assert f"<th>mAP</th><td>{best['val_map']:.4f} " in page
    assert f"<th>F1 micro / macro</th><td>{best['val_f1_micro']:.4f} / {best['val_f1_macro']:.4f} " in page
    for name in (*MULTILABEL_FIGURES, "report.html"):
        (folder / name).unlink()
    code, out, err = viz_cli(["report", folder, "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(line.split()[-1] for line in out.splitlines() if line.startswith("wrote")) == sorted(
        str(folder / name) for name in ("curves.png", *MULTILABEL_FIGURES, "report.html")
    )
    # best.safetensors evaluated again (in batches of another size: F1, decided at thresholds that equal a validation
    # probability, may move by an image; the ranking behind mAP does not)
    assert f"val mAP {best['val_map']:.4f}, F1 micro " in out and "subset accuracy" in out
    assert not any((folder / name).exists() for name in MULTICLASS_ONLY)


def test_the_end_of_run_report_uses_the_thresholds_of_the_reported_epoch(tmp_path):
    splits = tagged_shapes_dataset()
    labels = torch.stack([splits.val[i][1] for i in range(len(splits.val))])
    kept = ValidationOutputs(2, torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(0)), labels,
                             torch.arange(len(labels)))
    config = SimpleNamespace(backbone="b", dataset=TINY_MULTILABEL_DATASET, data_dir=None)
    run = SimpleNamespace(splits=splits, config=config, output_dir=tmp_path, best_validation=kept, last_validation=kept,
                          thresholds={1: [0.5] * 3, 2: [0.1, 0.9, 0.6]})
    report = kept_evaluation(run, 2, "best.safetensors")
    assert report.task == "multilabel" and report.multilabel.thresholds == pytest.approx([0.1, 0.9, 0.6])
    expected = torch.sigmoid(kept.logits.double()) >= torch.tensor([0.1, 0.9, 0.6], dtype=torch.float64)
    assert report.multilabel.predicted == expected.sum(dim=0).tolist()


def test_tensorboard_logs_map_and_f1_in_their_own_section():
    writer = SimpleNamespace(scalars=[], add_scalar=lambda *args: writer.scalars.append(args), flush=lambda: None)
    callback = tensorboard.TensorBoard()
    callback.writer = writer
    metrics = {"epoch": 3, "val_loss": 0.4, "val_acc": 0.25, "val_map": 0.7, "val_f1_micro": 0.6, "val_f1_macro": 0.5}
    callback.on_epoch_end(None, metrics)
    logged = {tag: (value, step) for tag, value, step in writer.scalars}
    assert logged["multilabel/val_map"] == (0.7, 3) and logged["multilabel/val_f1_micro"] == (0.6, 3)
    assert logged["multilabel/val_f1_macro"] == (0.5, 3) and logged["accuracy/val_acc"] == (0.25, 3)
