"""The csv dataset through `tlcore run` and `tlcore eval`: its options, its first lines, test splits, bad files."""

from __future__ import annotations

import json

import pytest
import tlcore_datasets
from test_tlcore_datasets_csv import write_dataset

from tlcore.testing import TINY_BACKBONE, write_cifar10


@pytest.fixture
def cli(tlcore_host, tlcore_cli):
    tlcore_host.register(tlcore_datasets, "datasets")
    return lambda *args: tlcore_cli(*[str(arg) for arg in args])


def run_args(root, output, *extra):
    return [
        "run", "--backbone", TINY_BACKBONE, "--dataset", "csv", "--data-dir", root, "--weights", "none",
        "--epochs", "1", "--batch-size", "4", "--image-size", "12", "--device", "cpu", "--workers", "0",
        "--output", output, *extra,
    ]


def one_line(result, *fragments):
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_a_run_on_csv_with_renamed_columns_states_its_split_and_evaluates_test(cli, tmp_path):
    root = write_dataset(tmp_path / "data", test=True)
    for name in ("train.csv", "test.csv"):
        text = (root / name).read_text(encoding="utf-8").replace("image,label", "file,kind", 1)
        (root / name).write_text(text, encoding="utf-8")
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("img/gone.png,cat\n")
    result = cli(*run_args(root, tmp_path / "run", "--image-column", "file", "--label-column", "kind"))
    assert result.code == 0, result.err
    shown = result.out + result.err
    assert "holding out 2 of 10 images of train.csv" in shown and "seed 0" in shown
    assert "skipped 1 rows of train.csv: line 12 img/gone.png (missing)" in shown
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["plugin_options"]["image_column"] == "file" and config["plugin_options"]["label_column"] == "kind"
    # eval rebuilds the csv data with the recorded columns, on each split
    for split, images in (("val", 2), ("test", 2), ("train", 8), ("all", 12)):
        result = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", split, "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["images"] == images, split
    # without the recorded options the header would not be understood: they really travel
    result = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--image-column", "image")
    one_line(result, "train.csv: line 1: no column 'image'", "--image-column")


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("missing column", ("train.csv: line 1: no column 'label'",)),
        ("empty label", ("train.csv: line 12, column 'label': the label is empty",)),
        ("label unseen in training", ("val.csv: line 4, column 'label': label 'horse' never appears in train.csv",)),
        ("path escaping root", ("train.csv: line 12, column 'image': ../outside.png leads outside the data folder",)),
        ("not utf-8", ("train.csv: line 12, column 2: byte 0xe9 is not UTF-8",)),
        ("header only", ("train.csv: it has a header (line 1) but no rows",)),
    ],
)
def test_bad_csv_files_are_one_line_exit_2(cli, tmp_path, damage, fragments):
    root = write_dataset(tmp_path / "data", val=True)
    train = root / "train.csv"
    if damage == "missing column":
        train.write_text(train.read_text(encoding="utf-8").replace("image,label", "image,tag", 1), encoding="utf-8")
    elif damage == "empty label":
        train.write_text(train.read_text(encoding="utf-8") + "img/cat_0.png,\n", encoding="utf-8")
    elif damage == "label unseen in training":
        (root / "val.csv").write_text((root / "val.csv").read_text() + "img/cat_0.png,horse\n", encoding="utf-8")
    elif damage == "path escaping root":
        train.write_text(train.read_text(encoding="utf-8") + "../outside.png,cat\n", encoding="utf-8")
    elif damage == "not utf-8":
        train.write_bytes(train.read_bytes() + "img/cat_0.png,caf\xe9\n".encode("latin-1"))
    else:
        train.write_text("image,label\n", encoding="utf-8")
    result = cli(*run_args(root, tmp_path / "run"))
    one_line(result, *fragments)
    assert not (tmp_path / "run").exists()  # refused before any run folder


def test_cifar_evaluates_its_official_test_batch_by_name(cli, tmp_path):
    data = write_cifar10(tmp_path / "cifar", train_per_batch=4, test_images=10)
    result = cli(
        "run", "--backbone", TINY_BACKBONE, "--dataset", "cifar10", "--data-dir", data, "--weights", "none",
        "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--no-download",
        "--output", tmp_path / "run",
    )
    assert result.code == 0, result.err
    test = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", "test", "--json")
    assert test.code == 0, test.err
    val = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", "val", "--json")
    assert json.loads(test.out)["images"] == 10 and json.loads(test.out)["accuracy"] == json.loads(val.out)["accuracy"]
    every = cli("eval", "--checkpoint", tmp_path / "run", "--device", "cpu", "--split", "all", "--json")
    assert json.loads(every.out)["images"] == 30  # 20 train + 10 test, the test batch counted once


def test_the_report_shows_the_test_split_of_a_csv_dataset(cli, tlcore_host, tmp_path):
    tlcore_viz = pytest.importorskip("tlcore_viz")
    root = write_dataset(tmp_path / "data", val=True, test=True)
    result = cli(*run_args(root, tmp_path / "run", "--callbacks", "-progress"))  # viz is not registered yet
    assert result.code == 0, result.err
    tlcore_host.register(tlcore_viz, "viz")
    result = cli("report", tmp_path / "run", "--device", "cpu", "--split", "test")
    assert result.code == 0, result.err
    assert "test accuracy" in result.out and "/2)" in result.out
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "on the test split, 2 images" in page
