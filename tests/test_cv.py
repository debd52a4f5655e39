"""Cross-validation: stratified folds of any dataset's training split, K runs under one folder, resumable."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

import tlcore
from tests.test_cli import TINY, assert_one_line_error, run_cli
from tlcore.build import build_dataset
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.cv import CV_FILE, FoldSubset, fold_splits, run_cv, stratified_folds, summarize
from tlcore.dataset import DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError
from tlcore.evaluation import evaluate_checkpoint
from tlcore.interrupt import RunInterrupted
from tlcore.testing import shapes_dataset


def test_folds_are_disjoint_stratified_and_cover_every_image_once():
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0] * 23 + [1] * 11 + [2] * 5 + [3] * 1)[order]
    folds = stratified_folds(labels, 4, seed=7)
    everything = torch.cat(folds)
    assert sorted(everything.tolist()) == list(range(40))  # every image exactly once, so disjoint too
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for value in range(4):
        per_fold = [int((labels[fold] == value).sum()) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1, (value, per_fold)  # each class spread evenly
    assert all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 4, seed=7), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folds, stratified_folds(labels, 4, seed=8), strict=True))
    with pytest.raises(ValueError):
        stratified_folds(torch.tensor([0, 1]), 3, seed=0)


class Listed(Dataset):
    """A dataset of no known kind: labels only by reading items."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.full((3, 4, 4), index, dtype=torch.uint8), self.labels[index]


def test_fold_splits_wrap_any_dataset():
    data = shapes_dataset()
    whole = len(data.train)
    held = [fold_splits(data, 3, k, seed=0) for k in (1, 2, 3)]
    assert all(isinstance(s.train, TensorImageDataset) and isinstance(s.val, TensorImageDataset) for s in held)
    assert sum(len(s.val) for s in held) == whole and all(len(s.train) + len(s.val) == whole for s in held)
    assert "fold 2 of 3" in held[1].validation and held[1].classes == data.classes
    plain = DatasetSplits(classes=["a", "b"], train=Listed([0, 1] * 6), val=Listed([0, 1]))
    split = fold_splits(plain, 2, 1, seed=0)
    assert isinstance(split.val, FoldSubset) and len(split.val) == 6 and len(split.train) == 6
    seen = [int(split.val[i][0][0, 0, 0]) for i in range(6)] + [int(split.train[i][0][0, 0, 0]) for i in range(6)]
    assert sorted(seen) == list(range(12))
    assert split.val.targets.tolist().count(0) == 3


def test_fold_options_are_checked(host, tiny_config):
    for options, fragment in [
        ({"folds": 3}, "needs --fold N"),
        ({"fold": 2}, "needs --folds K"),
        ({"folds": 3, "fold": 4}, "--fold must be in [1, 3]"),
    ]:
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            build_dataset(tiny_config(**options), host)


def test_a_cv_run_writes_every_fold_and_the_summary(host, tmp_path, capsys):
    parent = tmp_path / "cv"
    code, out, err = run_cli(["cv", *TINY, "--folds", "2", "--epochs", "1", "--output", str(parent)], capsys)
    assert code == 0, err
    record = json.loads((parent / CV_FILE).read_text())
    assert record["folds"] == 2 and sorted(record["completed"]) == ["1", "2"]
    summary = record["summary"]
    accuracies = [record["completed"][k]["history"][0]["val_acc"] for k in ("1", "2")]
    assert summary["val_acc"]["folds"] == accuracies
    assert summary["val_acc"]["mean"] == pytest.approx(sum(accuracies) / 2)
    assert summary["val_acc"]["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)
    assert "val_loss" in summary and "train_loss" in summary and "val_acc" in out and "mean" in out
    assert "fold 1 of 2: 18 of the 36 training images held out" in err  # the banner says which fold, and sizes
    resolved = json.loads((parent / "fold-2" / "config.json").read_text())["resolved"]
    assert resolved["train_images"] == 18 and resolved["val_images"] == 18
    _, info = read_checkpoint(parent / "fold-2" / "best.safetensors")
    assert info.data["folds"] == 2 and info.data["fold"] == 2
    report = evaluate_checkpoint(parent / "fold-2", device="cpu", host=host, workers=0)  # its own held-out fold
    assert report.metrics.images == 18 and report.metrics.accuracy == pytest.approx(accuracies[1])


def test_cv_refuses_bad_options(host, tmp_path, capsys):
    code, _, err = run_cli(["cv", *TINY, "--epochs", "1", "--output", str(tmp_path / "x")], capsys)
    assert_one_line_error(code, err, "needs --folds K")
    code, _, err = run_cli(["cv", *TINY, "--folds", "2", "--fold", "1", "--output", str(tmp_path / "y")], capsys)
    assert_one_line_error(code, err, "trains every fold")
    code, _, err = run_cli(["cv", "--resume", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "not a cross-validation folder")


class StopOnce(Callback):
    fired = False

    def on_train_batch_end(self, run):
        if run.config.fold == 2 and run.epoch_step == 1 and not StopOnce.fired:
            StopOnce.fired = True
            os.kill(os.getpid(), signal.SIGINT)


class StopPlugin:
    @tlcore.hookimpl
    def tlcore_register_callbacks(self, register):
        register("test:stop_once", lambda config: StopOnce())


def test_cv_resumes_the_interrupted_fold_and_keeps_finished_ones(host, tiny_config, tmp_path):
    host.register(StopPlugin(), "stop")
    StopOnce.fired = False
    config = tiny_config(folds=2, epochs=1, output=str(tmp_path / "cv"), callbacks=["-progress", "+test:stop_once"])
    with pytest.raises(RunInterrupted, match="tlcore cv --resume"):
        run_cv(config, host)
    parent = tmp_path / "cv"
    assert list(json.loads((parent / CV_FILE).read_text())["completed"]) == ["1"]
    first = (parent / "fold-1" / "best.safetensors").stat().st_mtime_ns
    record = run_cv(host=host, resume=parent)
    assert sorted(record["completed"]) == ["1", "2"] and "summary" in record
    assert (parent / "fold-1" / "best.safetensors").stat().st_mtime_ns == first  # the finished fold was not redone
    assert len(record["completed"]["2"]["history"]) == 1


def test_summary_of_folds():
    histories = [
        [{"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}, {"epoch": 2, "val_acc": 0.7, "val_loss": 0.8}],
        [{"epoch": 1, "val_acc": 0.9, "val_loss": 0.4}, {"epoch": 2, "val_acc": 0.6, "val_loss": 0.9}],
        [{"epoch": 1, "val_acc": 0.8, "val_loss": 0.5, "trainable_groups": ["head"]}],
    ]
    summary = summarize(histories)
    assert summary["val_acc"]["folds"] == [0.7, 0.9, 0.8] and summary["epoch"]["folds"] == [2, 1, 1]
    assert summary["val_acc"]["mean"] == pytest.approx(0.8) and summary["val_acc"]["std"] == pytest.approx(0.1)
    assert "trainable_groups" not in summary


def test_a_checkpoint_with_a_damaged_fold_record_is_refused(host, tiny_config, tmp_path):
    from tests.test_calibration import rewrite_metadata
    from tlcore.errors import WeightsError
    from tlcore.train import fit

    result = fit(tiny_config(folds=3, fold=3, epochs=1, callbacks="-progress"), host)
    path = result.output_dir / "best.safetensors"
    assert read_checkpoint(path)[1].data["fold"] == 3
    def replaced(data):
        def change(record):
            record["data"].pop("folds", None)
            record["data"].pop("fold", None)
            record["data"].update(data)

        return change

    for data in ({"folds": 3, "fold": 4}, {"folds": 1, "fold": 1}, {"fold": 2}, {"folds": "3", "fold": 1}):
        rewrite_metadata(path, replaced(data))
        with pytest.raises(WeightsError, match="data.fold"):
            read_checkpoint(path)
    rewrite_metadata(path, replaced({"folds": 3, "fold": 2}))
    assert read_checkpoint(path)[1].data["fold"] == 2


def test_cv_is_a_builtin_command_no_plugin_can_take(tlcore_cli, capsys):
    """Commands built by config_options belong to their own module, which is how tlcore_cli tells core commands
    (kept) from those a plugin hook adds (added again on each call): cv must not count as tlcore.cli's."""
    from tlcore import cli

    run_cli(["cv", "--help"], capsys)  # the process's app now holds the commands the plugin hooks added
    added = {command.name: command.callback.__module__ for command in cli.app.registered_commands}
    assert added["cv"] == added["lr-find"] == "tlcore.commands" and added["run"] == "tlcore.cli"
    for _ in range(2):
        result = tlcore_cli("cv", "--help")
        assert result.code == 0 and "--folds" in result.out and "warning" not in result.err, result.err
