"""The end of a run: the report reuses the last validation pass's outputs instead of scoring the split again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tlcore_viz.callbacks import kept_evaluation

import tlcore.evaluation
from tlcore import Callback, ValidationOutputs
from tlcore.evaluation import evaluate_checkpoint
from tlcore.hookspecs import hookimpl
from tlcore.testing import TINY_DATASET, shapes_dataset
from tlcore.train import fit


class Keep(Callback):
    """Remembers the RunState it served, to look at it after fit."""

    name = "keep"
    runs: list = []

    def on_fit_end(self, run) -> None:
        Keep.runs.append(run)


class CountedData:
    """The tiny dataset under another name, counting how often its factory is called (once per scoring of the data)."""

    def __init__(self):
        self.built = 0

    @hookimpl
    def tlcore_register_datasets(self, register):
        def make(name, options):
            self.built += 1
            return shapes_dataset(seed=options.seed)

        register("test:counted", make)

    @hookimpl
    def tlcore_register_callbacks(self, register):
        register("keep", lambda config: Keep())


@pytest.fixture
def counted(viz_host, tlcore_register, monkeypatch):
    """The counting dataset registered; ``passes`` counts the evaluation passes made after training."""
    plugin = CountedData()
    tlcore_register(plugin, "counted")
    Keep.runs = []
    passes = []
    real = tlcore.evaluation.collect_outputs
    monkeypatch.setattr(tlcore.evaluation, "collect_outputs", lambda *a, **k: passes.append(1) or real(*a, **k))
    return SimpleNamespace(plugin=plugin, passes=passes)


def test_the_report_at_the_end_of_a_run_scores_nothing_again(counted, tiny_run_config, viz_host):
    result = fit(tiny_run_config(dataset="test:counted", epochs=3, callbacks="-progress,+keep"), viz_host)
    assert counted.plugin.built == 1 and counted.passes == []  # the dataset was built for training only
    run = Keep.runs[-1]
    best = max(result.history, key=lambda m: m["val_acc"])
    assert run.saved_epochs == {"last.safetensors": 3, "best.safetensors": best["epoch"]}
    kept = run.last_validation
    assert isinstance(kept, ValidationOutputs) and kept.epoch == 3
    assert kept.logits.dtype == torch.float32 and kept.logits.shape == (12, 2) and kept.logits.device.type == "cpu"
    assert kept.labels.dtype == torch.int64 and kept.indices.tolist() == list(range(12))
    assert kept.labels.tolist() == run.splits.val.labels.tolist()
    assert run.best_validation.epoch == best["epoch"]
    # the logits take part in autograd (calibration fits a temperature on them): no inference tensors
    temperature = torch.ones((), requires_grad=True)
    torch.nn.functional.cross_entropy(kept.logits / temperature, kept.labels).backward()
    assert temperature.grad is not None
    # the figures are the best epoch's own validation: its val_acc, and what `tlcore eval` computes for the checkpoint
    page = (result.output_dir / "report.html").read_text(encoding="utf-8")
    evaluated = evaluate_checkpoint(result.output_dir / "best.safetensors", device="cpu", host=viz_host)
    assert evaluated.metrics.accuracy == best["val_acc"]
    assert f"best.safetensors (epoch {best['epoch']}) on the val split, 12 images" in page
    assert f"{best['val_acc']:.4f} ({evaluated.metrics.correct}/12)" in page
    assert f"loss {evaluated.metrics.loss:.4f}" in page
    for name in ("confusion.png", "predictions.png", "top_losses.png"):
        assert (result.output_dir / name).stat().st_size > 1000


def test_without_a_checkpoint_the_last_validation_is_reported(counted, tiny_run_config, viz_host):
    result = fit(tiny_run_config(dataset="test:counted", epochs=1, callbacks="-progress,-checkpoint"), viz_host)
    assert counted.plugin.built == 1 and counted.passes == []
    page = (result.output_dir / "report.html").read_text(encoding="utf-8")
    assert "the model in memory (epoch 1) on the val split, 12 images" in page
    assert f"{result.history[0]['val_acc']:.4f} (" in page


def outputs(epoch: int) -> ValidationOutputs:
    return ValidationOutputs(epoch, torch.randn(12, 2), torch.arange(12) % 2, torch.arange(12))


def fake_run(tmp_path, **kept) -> SimpleNamespace:
    splits = shapes_dataset()
    config = SimpleNamespace(backbone="b", dataset=TINY_DATASET, data_dir=None)
    return SimpleNamespace(splits=splits, config=config, output_dir=tmp_path, thresholds={}, **kept)


def test_the_report_uses_only_outputs_of_the_reported_checkpoints_epoch(tmp_path):
    run = fake_run(tmp_path, best_validation=outputs(2), last_validation=outputs(4))
    assert kept_evaluation(run, 2, "best.safetensors").epoch == 2
    assert kept_evaluation(run, 4, "last.safetensors").epoch == 4
    # best.safetensors of an epoch whose outputs are gone (before a resume): scored again, never misattributed
    assert kept_evaluation(run, 3, "best.safetensors") is None
    assert kept_evaluation(fake_run(tmp_path, best_validation=None, last_validation=None), 4, "x") is None
    report = kept_evaluation(run, 2, "best.safetensors")
    assert report.outputs.predictions.tolist() == run.best_validation.logits.argmax(dim=1).tolist()
    assert report.data is run.splits.val and report.split_sizes == {"train": 36, "val": 12}


def test_a_subset_of_the_split_keeps_its_images_in_the_order_of_the_outputs(tmp_path):
    run = fake_run(tmp_path, last_validation=None)
    run.best_validation = ValidationOutputs(1, torch.randn(3, 2), torch.tensor([1, 0, 1]), torch.tensor([7, 2, 5]))
    report = kept_evaluation(run, 1, "best.safetensors")
    assert [int(report.data[i][1]) for i in range(3)] == [int(run.splits.val[i][1]) for i in (7, 2, 5)]
    run.best_validation = ValidationOutputs(1, torch.randn(3, 2), torch.tensor([1, 0, 1]), torch.tensor([7, 2, 12]))
    with pytest.raises(ValueError, match="outside the validation split of 12 images"):
        kept_evaluation(run, 1, "best.safetensors")


def test_the_best_validation_follows_the_checkpoint_rule():
    from tlcore.state import RunState

    run = SimpleNamespace(history=[], epoch=0, last_validation=None, best_validation=None)
    keep = RunState.keep_validation
    for epoch, acc in enumerate([0.5, 0.7, 0.7, 0.6, 0.9]):
        run.epoch = epoch
        keep(run, outputs(epoch + 1), acc)
        run.history.append({"epoch": epoch + 1, "val_acc": acc})
        assert run.last_validation.epoch == epoch + 1
        assert run.best_validation.epoch == {0: 1, 1: 2, 2: 2, 3: 2, 4: 5}[epoch]  # the first of equal bests
    run.epoch = 5
    keep(run, None, 0.95)  # a best epoch whose outputs were not kept: the old best's are not kept as its
    assert run.best_validation is None and run.last_validation is None
