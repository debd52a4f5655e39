"""`tlcore run --task multilabel` end to end on the csv and imagefolder datasets, written here in their exact format."""

from __future__ import annotations

import json

import pytest
import tlcore_datasets
from test_tlcore_datasets_multilabel import csv_root, folder_root

from tlcore.testing import TINY_BACKBONE


@pytest.fixture
def cli(tlcore_host, tlcore_cli):
    tlcore_host.register(tlcore_datasets, "datasets")
    return lambda *args: tlcore_cli(*[str(arg) for arg in args])


def run_args(dataset, root, output, *extra):
    return [
        "run", "--backbone", TINY_BACKBONE, "--dataset", dataset, "--data-dir", root, "--weights", "none",
        "--epochs", "2", "--batch-size", "4", "--image-size", "12", "--device", "cpu", "--workers", "0",
        "--output", output, "--task", "multilabel", *extra,
    ]


def test_a_multilabel_run_on_a_csv_dataset_trains_and_evaluates_test(cli, tmp_path):
    root = csv_root(tmp_path / "data", val=False, test=True)
    result = cli(*run_args("csv", root, tmp_path / "run"))
    assert result.code == 0, result.err
    shown = result.out + result.err
    assert "images of train.csv (iterative stratification" in shown
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all("val_map" in epoch for epoch in history)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["task"] == "multilabel"
    result = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", "test", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["images"] == 1


def test_a_multilabel_run_on_an_image_folder_with_labels_csv(cli, tmp_path):
    root = folder_root(tmp_path / "data")
    result = cli(*run_args("imagefolder", root, tmp_path / "run"))
    assert result.code == 0, result.err
    assert "val/ (2 images listed in labels.csv)" in result.out + result.err
    for split, images in (("test", 1), ("val", 2)):
        result = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", split, "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["images"] == images, split


def test_a_single_label_run_on_a_multilabel_csv_is_one_line(cli, tmp_path):
    root = csv_root(tmp_path / "data")
    args = run_args("csv", root, tmp_path / "run")
    result = cli(*args[: args.index("--task")])
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), result.err
    assert "looks multi-label" in lines[0] and "--task multilabel" in lines[0]
    assert not (tmp_path / "run").exists()
