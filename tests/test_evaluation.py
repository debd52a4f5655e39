"""Evaluation: metrics by hand, and eval on the split a run validated on reproduces the run's val_acc."""

import pytest
import torch

from tlcore import plugins
from tlcore.build import build_dataset
from tlcore.checkpoint import read_checkpoint
from tlcore.config import build_config
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError, DataError
from tlcore.evaluation import Outputs, compute_metrics, evaluate_checkpoint, render_report
from tlcore.hookspecs import hookimpl
from tlcore.testing import TinyPlugin
from tlcore.train import fit

SEVEN = [f"c{i}" for i in range(7)]


def seven_classes(classes=SEVEN, seed=0):
    """Seven classes told apart by a bright stripe in a class-specific row and channel; hard enough for 1 epoch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(7).repeat(12)
    images = torch.randint(0, 200, (len(labels), 3, 16, 16), generator=generator, dtype=torch.uint8)
    for c in range(7):
        images[labels == c, c % 3, 2 * c : 2 * c + 2, :] = 255
    return DatasetSplits(
        list(classes), TensorImageDataset(images[:56], labels[:56]), TensorImageDataset(images[56:], labels[56:])
    )


class SevenPlugin:
    """``test:seven`` and two variants: the same classes reordered, and other class names."""

    @hookimpl
    def tlcore_register_datasets(self, register):
        register("test:seven", lambda name, options: seven_classes(seed=options.seed))
        reordered = list(reversed(SEVEN))

        def reorder(name, options):
            data = seven_classes(seed=options.seed)
            remap = torch.tensor([reordered.index(c) for c in SEVEN])  # same images, labels in the reversed order
            relabel = lambda part: TensorImageDataset(part.images, remap[part.labels])  # noqa: E731
            return DatasetSplits(reordered, relabel(data.train), relabel(data.val))

        register("test:seven-reordered", reorder)
        register("test:other", lambda name, options: seven_classes(["c0", "c1", "c2", "c3", "c4", "x5", "x6"], options.seed))


@pytest.fixture
def seven_run(tmp_path):
    """One short run on test:seven (accuracy well below 1); returns its folder."""
    host = plugins.reset_host(load_installed=False)
    host.register(TinyPlugin(), "tiny")
    host.register(SevenPlugin(), "seven")
    config = build_config(
        overrides=dict(
            backbone="tlcore.testing:tiny",
            dataset="test:seven",
            weights="none",
            epochs=2,
            batch_size=8,
            lr=0.02,
            output=str(tmp_path / "run"),
            callbacks="-progress",
            seed=5,
            val_fraction=0.3,
        )
    )
    result = fit(config, host)
    yield result
    plugins.reset_host(load_installed=False)


def outputs(labels, predictions, top=None):
    labels, predictions = torch.tensor(labels), torch.tensor(predictions)
    return Outputs(labels, predictions, torch.full((len(labels),), 0.5), torch.ones(len(labels)), top)


def test_metrics_by_hand():
    # class 0: 2 of 3 right; class 1: predicted once wrongly, never right; class 2: absent, never predicted
    metrics = compute_metrics(outputs([0, 0, 0, 1, 1], [0, 0, 1, 0, 0]), ["a", "b", "c"])
    assert metrics.confusion == [[2, 1, 0], [2, 0, 0], [0, 0, 0]]
    assert metrics.accuracy == pytest.approx(2 / 5) and metrics.correct == 2 and metrics.images == 5
    a, b, c = metrics.per_class
    assert a == {
        "class": "a",
        "precision": pytest.approx(0.5),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7),
        "support": 3,
    }
    assert b["precision"] == 0 and b["recall"] == 0 and b["f1"] == 0 and b["support"] == 2
    assert c["support"] == 0
    # macro over the classes present in labels or predictions (a, b), not c
    assert metrics.macro["precision"] == pytest.approx(0.25)
    assert metrics.macro["recall"] == pytest.approx(1 / 3)
    assert metrics.macro["f1"] == pytest.approx(2 / 7)
    assert metrics.top5_accuracy is None and metrics.loss == pytest.approx(1.0)


def test_top5_is_counted_when_there_are_more_than_five_classes():
    metrics = compute_metrics(outputs([0, 1, 2, 3], [1, 1, 0, 0], torch.tensor([True, True, False, True])), SEVEN)
    assert metrics.top5_accuracy == pytest.approx(0.75) and metrics.accuracy == pytest.approx(0.25)


def test_eval_reproduces_the_runs_val_acc(seven_run):
    folder = seven_run.output_dir
    _, info = read_checkpoint(folder / "best.safetensors")
    recorded = next(m for m in seven_run.history if m["epoch"] == info.epoch)
    assert 0.2 < recorded["val_acc"] < 1.0  # a non-trivial number, so equality means something
    report = evaluate_checkpoint(folder / "best.safetensors", batch_size=8, device="cpu")
    assert report.metrics.accuracy == recorded["val_acc"]
    assert report.metrics.loss == pytest.approx(recorded["val_loss"], rel=1e-5)
    assert report.dataset == "test:seven" and report.split == "val" and report.metrics.images == 28
    assert report.metrics.top5_accuracy is not None and report.metrics.top5_accuracy >= report.metrics.accuracy
    assert sum(map(sum, report.metrics.confusion)) == 28
    # the last checkpoint reproduces the last epoch the same way, whatever the batch size
    last = evaluate_checkpoint(folder, batch_size=5, device="cpu")  # a run folder means its best checkpoint
    assert last.checkpoint.endswith("best.safetensors")
    last = evaluate_checkpoint(folder / "last.safetensors", batch_size=5, device="cpu")
    assert last.metrics.accuracy == seven_run.history[-1]["val_acc"]
    table = render_report(report)
    assert f"accuracy    {recorded['val_acc']:.4f}" in table and "macro avg" in table and " 6  c6" in table


def test_eval_on_train_split_and_with_classes_in_another_order(seven_run):
    folder = seven_run.output_dir
    train = evaluate_checkpoint(folder, split="train", device="cpu")
    assert train.metrics.images == 56 and train.split == "train"
    base = evaluate_checkpoint(folder, device="cpu")
    reordered = evaluate_checkpoint(folder, dataset="test:seven-reordered", device="cpu")
    assert reordered.metrics.confusion == base.metrics.confusion  # labels mapped back to the checkpoint's order


def test_eval_refuses_other_classes_and_bad_options(seven_run):
    folder = seven_run.output_dir
    with pytest.raises(DataError, match="only in the dataset: x5, x6; only in the checkpoint: c5, c6"):
        evaluate_checkpoint(folder, dataset="test:other", device="cpu")
    with pytest.raises(ConfigError, match="split 'test' is not accepted"):
        evaluate_checkpoint(folder, split="test")


def test_eval_uses_the_recorded_split_seed(seven_run, monkeypatch):
    # the checkpoint's seed and val_fraction (5 and 0.3 here), not the defaults, decide the split
    seen = []
    import tlcore.evaluation as evaluation

    def spy(config, host):
        seen.append((config.dataset, config.seed, config.val_fraction))
        return build_dataset(config, host)

    monkeypatch.setattr(evaluation, "build_dataset", spy)
    evaluate_checkpoint(seven_run.output_dir, device="cpu")
    assert seen == [("test:seven", 5, 0.3)]
