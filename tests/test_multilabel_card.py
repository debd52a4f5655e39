"""The model card of a multi-label run (--task multilabel): task, selection metric, mAP/F1, thresholds, prediction rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tlcore.backbone import Preprocessing
from tlcore.checkpoint import read_checkpoint
from tlcore.config import build_config
from tlcore.model_card import copy_card_for_export, read_card, render_card, write_card
from tlcore.state import ValidationOutputs
from tlcore.testing import TINY_BACKBONE, TINY_MULTILABEL_DATASET
from tlcore.train import fit

# 4 images, 3 classes; AP, precision, recall and F1 below are worked out by hand in the test's comments
LABELS = torch.tensor([[1.0, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
LOGITS = torch.tensor([[2.0, 3, -1], [1, -2, -1], [0.5, 0, -1], [-1, 1, 4]])
CLASSES = ["a", "b", "a|b"]
THRESHOLDS = [0.6, 0.5, 0.9]  # not the F1-maximising ones: the card must show the run's, not its own choice


def history(*maps, val_acc=(0.5, 0.75)):
    return [
        dict(epoch=e, train_loss=0.6, train_acc=0.2, val_loss=0.5, val_acc=acc, val_map=m, val_f1_micro=0.55,
             val_f1_macro=0.5, lr=0.001)
        for e, (m, acc) in enumerate(zip(maps, val_acc, strict=True), start=1)
    ]


def multilabel_run(tmp_path, classes=CLASSES, logits=LOGITS, labels=LABELS, thresholds=None, task="multilabel"):
    """A stand-in RunState of a finished two-epoch multilabel run whose best epoch (by val_map) is 2."""
    outputs = None
    if logits is not None:
        outputs = ValidationOutputs(epoch=2, logits=logits, labels=labels, indices=torch.arange(len(labels)))
    config = SimpleNamespace(
        dataset="csv", backbone="timm:resnet18", weights="pretrained", head="linear", head_hidden=512,
        head_dropout=0.0, freeze="none", freeze_to=None, data_dir="/data/x", folds=None, fold=None, seed=0,
        val_fraction=0.2, epochs=2, batch_size=8, accumulate=1, optimizer="adamw", lr=0.001, schedule="cosine",
        augment="standard", task=task,
    )
    return SimpleNamespace(
        config=config, classes=classes, history=history(0.6, 0.7222), image_size=224,
        backbone=SimpleNamespace(weights="timm pretrained resnet18.a1_in1k", preprocessing=Preprocessing()),
        saved_epochs={}, splits=None, output_dir=tmp_path, temperatures={1: 1.0, 2: 1.0},
        thresholds={2: THRESHOLDS if thresholds is None else thresholds}, best_validation=outputs,
        last_validation=outputs, device="cpu", stop_reason="",
    )


def test_the_card_states_task_selection_metric_scores_thresholds_and_the_rule(tmp_path):
    card = render_card(multilabel_run(tmp_path), ["tlcore", "run", "--task", "multilabel"])
    assert "tags:\n- image-classification\n- multi-label-classification\n- transfer-learning\n" in card
    assert "A 3-class multi-label image classifier" in card and "An image may carry any number of the classes." in card
    assert "- Task: multi-label (`--task multilabel`): one sigmoid per class, binary cross-entropy loss" in card
    # epoch 1 has the higher val_acc, epoch 2 the higher val_map: the card selects on val_map
    assert "Best epoch 2 (the highest val_map): val_map **0.7222**" in card
    assert "val_f1_micro 0.5500 and val_f1_macro 0.5000 at the epoch's thresholds" in card
    assert "| epoch | train_loss | train_acc | val_loss | val_acc | val_map | val_f1_micro | val_f1_macro | lr |" in card
    assert "class c is predicted when sigmoid(logit_c) >= threshold_c" in card and "no softmax, no temperature" in card
    assert "before the softmax" not in card and "It always answers one of these classes" not in card
    # a: positives ranked 1st and 2nd -> AP 1; at 0.6 three predicted (0.88, 0.73, 0.62), 2 right: P 2/3, R 1, F1 0.8
    assert "| a | 0.6000 | 2 | 3 | 1.0000 | 0.6667 | 1.0000 | 0.8000 |" in card
    # b: positives ranked 3rd and 4th -> AP 0.5 * 1/3 + 0.5 * 2/4; at 0.5: 3 predicted (0.95, 0.73, 0.5), 1 right
    assert "| b | 0.5000 | 2 | 3 | 0.4167 | 0.3333 | 0.5000 | 0.4000 |" in card
    # a|b: one positive alone on top, then three tied images holding the other -> AP 0.5 * 1 + 0.5 * 2/4; at 0.9 one
    assert "| a\\|b | 0.9000 | 2 | 1 | 0.7500 | 1.0000 | 0.5000 | 0.6667 |" in card
    # micro F1 2*4 / (7 predicted + 6 positives); no image has its exact label set
    assert "mAP 0.7222, F1 micro 0.6154, F1 macro 0.6222, subset accuracy 0.0000." in card
    assert "Tagging images like those of `csv` with any of the 3 classes" in card


def test_thresholds_not_recorded_for_the_epoch_are_chosen_as_the_run_chooses_them(tmp_path):
    run = multilabel_run(tmp_path)
    run.thresholds = {}
    card = render_card(run, ["tlcore"])
    # class a's F1-maximising cut takes its two most probable images (both positives, no negative): halfway between
    # sigmoid(1) and the next, sigmoid(0.5); b's takes every image down to its lowest positive, sigmoid(-2): half of
    # it; a|b's takes the top image, sigmoid(4) (F1 2/3 against 1/2 at the ties): halfway down to sigmoid(-1)
    p = lambda logit: torch.sigmoid(torch.tensor(logit))  # noqa: E731
    for name, threshold in (("a", (p(1.0) + p(0.5)) / 2), ("b", p(-2.0) / 2), ("a\\|b", (p(4.0) + p(-1.0)) / 2)):
        assert f"| {name} | {float(threshold):.4f} | 2 | " in card


def test_without_kept_outputs_the_card_lists_the_thresholds_and_says_where_the_scores_are(tmp_path):
    run = multilabel_run(tmp_path, logits=None)
    card = render_card(run, ["tlcore"])
    assert "Per-class scores: the validation predictions were not kept" in card
    assert "Thresholds of epoch 2:\n\n| class | threshold |\n|---|---|\n| a | 0.6000 |\n| b | 0.5000 |\n" in card


def test_many_classes_get_a_threshold_summary_and_the_lowest_ap_classes(tmp_path):
    count = 40
    classes = [f"c{i}" for i in range(count)]
    labels = torch.eye(count)
    labels[:, count - 1] = 0  # the last class has no positive image: no AP, threshold left at 0.5
    # class i's positive (image i, logit 0) is ranked below the i images j < i (logit 1): AP 1 / (i + 1)
    rows = torch.arange(count)[:, None]
    columns = torch.arange(count)[None, :]
    logits = torch.where(rows < columns, 1.0, torch.where(rows == columns, 0.0, -1.0))
    thresholds = [0.2 + 0.01 * i for i in range(count - 1)] + [0.5]
    card = render_card(multilabel_run(tmp_path, classes, logits, labels, thresholds), ["tlcore"])
    assert "Thresholds of epoch 2 (40 classes, each in the checkpoint): lowest 0.2000, median 0.3900, highest 0.5800; " \
        "1 class without a positive validation image (its threshold is the default 0.5)." in card
    assert "The 30 classes with the lowest AP:" in card
    table = [line for line in card.splitlines() if line.startswith("| c") and not line.startswith("| class")]
    assert [line.split(" | ")[0][2:] for line in table] == [f"c{i}" for i in range(38, 8, -1)]
    assert table[0].startswith("| c38 | 0.5800 | 1 | ") and f"| {1 / 39:.4f} |" in table[0]
    assert "| class | threshold |\n" not in card  # no per-class threshold table at this size


def test_the_best_epoch_is_the_highest_val_map_and_a_nan_map_never_wins(tmp_path):
    run = multilabel_run(tmp_path, logits=None)
    run.history = history(float("nan"), 0.4)
    assert "Best epoch 2 (the highest val_map): val_map **0.4000**" in render_card(run, ["tlcore"])
    run.saved_epochs = {"best.safetensors": 1, "last.safetensors": 2}  # the checkpoint callback's choice wins
    card = render_card(run, ["tlcore"])
    assert "Best epoch 1 (the highest val_map)" in card and "(epoch 1, the highest val_map)" in card


def test_a_multiclass_card_says_nothing_of_thresholds(tmp_path):
    card = render_card(multilabel_run(tmp_path, logits=None, task="multiclass"), ["tlcore"])
    assert "multi-label" not in card and "threshold_c" not in card and "before the softmax" in card
    assert "Best epoch 2: val_acc **0.7500**" in card


@pytest.mark.parametrize("task, says", [("multilabel", "apply a sigmoid to each"), ("multiclass", "calibrated logits")])
def test_the_export_copy_describes_the_outputs_of_the_task(tmp_path, task, says):
    write_card(multilabel_run(tmp_path, logits=LOGITS if task == "multilabel" else None, task=task), ["tlcore"], "finished")
    assert read_card(tmp_path) is not None
    copied = copy_card_for_export(tmp_path / "best.safetensors", tmp_path / "model.onnx", "onnx")
    assert says in copied.read_text().split("## This export")[1]


def test_a_multilabel_run_writes_a_card_with_its_thresholds(host, tmp_path):
    config = build_config(
        overrides=dict(
            backbone=TINY_BACKBONE, dataset=TINY_MULTILABEL_DATASET, task="multilabel", weights="none", epochs=2,
            batch_size=8, lr=0.003, output=str(tmp_path / "run"), callbacks="-progress",
        )
    )
    result = fit(config, host)
    card = (result.output_dir / "README.md").read_text()
    best = max(result.history, key=lambda m: m["val_map"])
    assert f"Best epoch {best['epoch']} (the highest val_map): val_map **{best['val_map']:.4f}**" in card
    assert "- multi-label-classification" in card and "sigmoid(logit_c) >= threshold_c" in card
    assert "| class | threshold | images | predicted | AP | precision | recall | F1 |" in card
    _, info = read_checkpoint(result.output_dir / "best.safetensors")
    assert info.task == "multilabel" and info.epoch == best["epoch"]
    rows = [line for line in card.splitlines() if line.startswith("| ") and line.count(" | ") == 7][1:]
    assert [row.split(" | ")[1] for row in rows] == [f"{t:.4f}" for t in info.thresholds]  # the checkpoint's
