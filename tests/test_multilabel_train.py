"""--task multilabel in the training loop: BCE per class, subset accuracy, mAP, thresholds in the checkpoint."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tlcore.checkpoint import read_checkpoint
from tlcore.multilabel import (
    MultilabelLoss,
    average_precision,
    choose_thresholds,
    multilabel_metrics,
    split_labels,
)
from tlcore.testing import (
    TINY_MULTILABEL_DATASET,
    check_resumes_exactly,
    tagged_shapes_dataset,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_case(seed: int, n: int = 40, c: int = 5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator)
    targets = (torch.rand(n, c, generator=generator) < 0.3).float()
    targets[:, -1] = 0  # a class without positives: AP undefined
    logits[:7, 1] = logits[7, 1]  # ties
    return logits, targets


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_scikit_learn(seed):
    logits, targets = random_case(seed)
    thresholds = torch.full((5,), 0.5)
    thresholds[0] = 0.3
    ours = multilabel_metrics(logits, targets, thresholds, list("abcde"))
    probabilities = torch.sigmoid(logits).numpy()
    predicted = (probabilities >= thresholds.numpy()).astype(int)
    y = targets.numpy().astype(int)
    for column in range(4):
        expected = sklearn_metrics.average_precision_score(y[:, column], probabilities[:, column])
        assert ours.ap[column] == pytest.approx(expected, abs=1e-9)
    assert ours.ap[4] is None
    assert ours.map == pytest.approx(sum(ours.ap[:4]) / 4)
    f1_micro = sklearn_metrics.f1_score(y, predicted, average="micro", zero_division=0)
    f1_macro = sklearn_metrics.f1_score(y, predicted, average="macro", zero_division=0)
    assert ours.f1_micro == pytest.approx(f1_micro)
    assert ours.f1_macro == pytest.approx(f1_macro)
    recall = sklearn_metrics.recall_score(y, predicted, average=None, zero_division=0)
    precision = sklearn_metrics.precision_score(y, predicted, average=None, zero_division=0)
    assert ours.recall == pytest.approx(list(recall))
    assert ours.precision == pytest.approx(list(precision))
    assert ours.subset_accuracy == pytest.approx(sklearn_metrics.accuracy_score(y, predicted))
    assert ours.loss == pytest.approx(sklearn_metrics.log_loss(y.ravel(), probabilities.ravel()), rel=1e-6)


def test_thresholds_maximise_each_class_f1():
    logits, targets = random_case(3, n=60, c=4)
    probabilities = torch.sigmoid(logits)
    chosen = choose_thresholds(probabilities, targets)
    y = targets.numpy().astype(int)
    for column in range(3):
        best = max(
            sklearn_metrics.f1_score(y[:, column], (probabilities[:, column] >= t).numpy().astype(int), zero_division=0)
            for t in probabilities[:, column].tolist()
        )
        got = sklearn_metrics.f1_score(
            y[:, column], (probabilities[:, column] >= chosen[column]).numpy().astype(int), zero_division=0
        )
        assert got == pytest.approx(best)
    assert chosen[3] == 0.5  # no positives: the default


def test_average_precision_of_a_perfect_ranking_is_one():
    targets = torch.tensor([[1.0], [1.0], [0.0]])
    assert average_precision(torch.tensor([[3.0], [2.0], [1.0]]), targets).item() == 1.0
    assert average_precision(torch.tensor([[1.0], [2.0], [3.0]]), targets).item() < 1.0


def test_split_labels_accepts_every_separator():
    assert split_labels("cat dog") == split_labels("cat;dog") == split_labels(" cat | dog ") == ["cat", "dog"]
    assert split_labels("cat;cat") == ["cat"]
    assert split_labels("  ") == []


def test_loss_smoothing_and_positive_weight():
    logits, targets = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = MultilabelLoss()(logits, targets)
    assert plain.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    weighted = MultilabelLoss(pos_weight=torch.tensor([3.0, 3.0]))(logits, targets)
    assert weighted.item() == pytest.approx(2 * plain.item())  # half the terms are positive, each x3
    smoothed = MultilabelLoss(smoothing=0.2)(torch.tensor([[5.0, -5.0]]), torch.tensor([[1.0, 0.0]]))
    assert smoothed.item() > MultilabelLoss()(torch.tensor([[5.0, -5.0]]), torch.tensor([[1.0, 0.0]])).item()


def test_a_multilabel_run_learns_and_its_checkpoint_carries_thresholds(tlcore_run):
    result = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", epochs=4, lr=0.05)
    last = result.history[-1]
    for key in ("val_map", "val_f1_micro", "val_f1_macro", "val_acc", "train_acc", "val_loss"):
        assert key in last
    assert last["val_map"] > 0.8  # three bright squares: easy to tell apart
    assert last["val_map"] > result.history[0]["val_map"] - 0.05
    best_epoch = max(result.history, key=lambda m: m["val_map"])["epoch"]
    _, info = read_checkpoint(result.output_dir / "best.safetensors")
    assert info.task == "multilabel" and info.epoch == best_epoch
    assert len(info.thresholds) == 3 and all(0 <= t <= 1 for t in info.thresholds)
    assert info.temperature == 1.0 and "thresholds" in info.calibration.get("reason", "")
    recorded = json.loads((result.output_dir / "config.json").read_text())
    assert recorded["config"]["task"] == "multilabel"


def test_val_metrics_match_a_rescoring_of_the_saved_model(tlcore_run):
    """val_acc (subset accuracy at 0.5) and val_loss (plain BCE) of the last epoch, recomputed from the weights."""
    result = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", epochs=2)
    data = tagged_shapes_dataset()
    model = result.model.eval()
    from tlcore.data import build_transform
    from tlcore.testing import tiny_backbone

    transform = build_transform(tiny_backbone().preprocessing, 16, train=False, augment="none", flip=False)
    images = torch.stack([transform(image) for image in data.val.images])
    with torch.no_grad():
        logits = model(images)
    labels = data.val.labels
    exact = ((logits > 0) == (labels > 0.5)).all(dim=1).float().mean().item()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    last = result.history[-1]
    assert last["val_acc"] == pytest.approx(exact)
    assert last["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert last["val_map"] == pytest.approx(multilabel_metrics(logits, labels, [0.5] * 3, data.classes).map, rel=1e-5)


def test_multilabel_runs_resume_exactly(host, tiny_config, tmp_path):
    import signal


    settings = dict(dataset=TINY_MULTILABEL_DATASET, task="multilabel", epochs=2, seed=3, class_weights="auto")
    whole, resumed = check_resumes_exactly(host, tiny_config, tmp_path, (1, 2), (signal.SIGTERM,), **settings)
    _, first = read_checkpoint(whole.output_dir / "last.safetensors")
    _, second = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert first.thresholds == second.thresholds


def test_class_weights_auto_are_positive_weights(tlcore_run):
    result = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", class_weights="auto")
    recorded = json.loads((result.output_dir / "config.json").read_text())
    targets = tagged_shapes_dataset().train.labels
    expected = ((len(targets) - targets.sum(0)) / targets.sum(0)).tolist()
    assert recorded["resolved"]["class_weights"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"dataset": "tlcore.testing:shapes"}, "gave one label per image"),
        ({"dataset": TINY_MULTILABEL_DATASET, "task": "multiclass"}, "but the task is multiclass"),
        ({"dataset": TINY_MULTILABEL_DATASET, "mixup": 0.2}, "--mixup"),
        ({"dataset": TINY_MULTILABEL_DATASET, "balanced_sampler": True}, "--balanced-sampler"),
    ],
)
def test_what_multilabel_cannot_do_is_one_line(tlcore_run, options, words):
    from tlcore.errors import ConfigError

    options = {"task": "multilabel", **options}
    with pytest.raises(ConfigError, match=re.escape(words)):
        tlcore_run(**options)


def test_cached_features_and_folds_take_multilabel_data(tlcore_run):
    cached = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", freeze="backbone", cache_features=True)
    assert "val_map" in cached.history[-1]
    fold = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", folds=3, fold=2)
    assert "val_map" in fold.history[-1]


def test_ema_is_judged_by_map(tlcore_run):
    result = tlcore_run(dataset=TINY_MULTILABEL_DATASET, task="multilabel", ema=0.9, epochs=2)
    for metrics in result.history:
        held = "ema" if metrics["ema_val_map"] > metrics["val_map"] else "model"
        assert metrics["checkpoint_weights"] == held


def test_chosen_thresholds_decide_their_own_images_the_same_way_when_rescored():
    """A threshold lies between two validation probabilities, so the float32 rule and a rescoring agree (F1 1 here)."""
    logits, labels = torch.tensor([[2.0], [1.0], [0.5], [-1.0]]), torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    chosen = choose_thresholds(torch.sigmoid(logits), labels)
    assert torch.sigmoid(torch.tensor(0.5)) < chosen[0] < torch.sigmoid(torch.tensor(1.0))
    assert multilabel_metrics(logits, labels, chosen, ["a"]).f1 == [1.0]
    assert multilabel_metrics(logits.double() + 1e-7, labels, chosen, ["a"]).f1 == [1.0]


@pytest.mark.parametrize("name", ["a;b", "golden retriever", "x|y"])
def test_multilabel_class_names_cannot_hold_a_separator(tlcore_register, tlcore_run, name):
    """A predicted label set is written "a;b": a class name with a separator would not read back as itself."""
    import dataclasses

    import tlcore
    from tlcore.errors import DataError

    class Plugin:
        @tlcore.hookimpl
        def tlcore_register_datasets(self, register):
            data = tagged_shapes_dataset()
            renamed = dataclasses.replace(data, classes=[name, *data.classes[1:]])
            register("test:separated", lambda dataset, options: renamed)

    tlcore_register(Plugin(), "separated")
    with pytest.raises(DataError, match="multi-label class names cannot hold whitespace"):
        tlcore_run(dataset="test:separated", task="multilabel")


@pytest.mark.parametrize(("names", "refused"), [(["red", "green", "red,green"], True), (["red", "a/b"], False)])
def test_labels_joined_by_another_separator_are_named(tlcore_register, tlcore_run, names, refused):
    """A cell "red,green" read as one class beside "red" and "green" is a wrong separator, said in one line."""
    import dataclasses

    import tlcore
    from tlcore.errors import DataError

    class Plugin:
        @tlcore.hookimpl
        def tlcore_register_datasets(self, register):
            data = tagged_shapes_dataset()
            renamed = dataclasses.replace(data, classes=[*names, *data.classes][:3])
            register("test:joined", lambda dataset, options: renamed)

    tlcore_register(Plugin(), "joined")
    if refused:
        with pytest.raises(DataError, match=r"class 'red,green' looks like the classes 'red', 'green' joined by ','"):
            tlcore_run(dataset="test:joined", task="multilabel")
    else:  # "a/b" without classes "a" and "b" is a name of its own
        assert tlcore_run(dataset="test:joined", task="multilabel").history
