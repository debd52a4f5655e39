"""tlcore-hf with --task multilabel, on small datasets this file writes with ``datasets`` itself; nothing downloads."""

from __future__ import annotations

import io
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: any attempt to reach the Hub fails
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

datasets = pytest.importorskip("datasets")

from tlcore_hf.dataset import load_hf  # noqa: E402

from tlcore import DataError, DatasetOptions  # noqa: E402

NAMES = ["cat", "dog", "bird"]  # a ClassLabel's order, not sorted: its order is the classes'
SETS = [[0], [0, 1], [1, 2], [2, 0], [1], [0, 1, 2], [2], [1, 0]]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """The parquet builder's cache goes to the test's folder, never to ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), shade, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(labels: list, label_feature) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "labels": label_feature})
    images = [{"bytes": png(20 * i), "path": None} for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": images, "labels": labels}, features=features)


def class_sets(sets=SETS):
    return table(sets, datasets.Sequence(datasets.ClassLabel(names=NAMES)))


def options(root, multilabel: bool = True, **extra) -> DatasetOptions:
    return DatasetOptions(data_dir=root, seed=0, val_fraction=0.25, multilabel=multilabel,
                          extra={"hf_label_column": "labels", **extra})


def hot(indices, width=3) -> list[float]:
    return [1.0 if i in indices else 0.0 for i in range(width)]


def fails(root, *expected: str, multilabel: bool = True) -> None:
    with pytest.raises(DataError) as caught:
        load_hf("hf", options(root, multilabel))
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_a_sequence_of_class_labels_gives_multi_hot_rows_in_the_class_label_order(tmp_path):
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": class_sets(), "validation": class_sets([[2], [0, 1]]),
                          "test": class_sets([[1]])}).save_to_disk(str(root))
    splits = load_hf("hf", options(root))
    assert splits.multilabel and splits.classes == NAMES
    assert splits.train.targets.dtype == torch.float32 and splits.train.targets.tolist() == [hot(s) for s in SETS]
    assert splits.val.targets.tolist() == [hot([2]), hot([0, 1])] and splits.test.targets.tolist() == [hot([1])]
    image, label = splits.train[2]
    assert image.size == (8, 8) and label.dtype == torch.float32 and label.tolist() == hot([1, 2])


def test_lists_of_text_or_integers_and_text_cells_give_the_sorted_distinct_values(tmp_path):
    text = [[NAMES[i] for i in s] for s in SETS]
    for name, labels, feature, classes in [
        ("text", text, datasets.Sequence(datasets.Value("string")), ["bird", "cat", "dog"]),
        ("ints", [[9 * i + 2 for i in s] for s in SETS], datasets.Sequence(datasets.Value("int64")), ["2", "11", "20"]),
        ("cells", [" ; ".join(s) for s in text], datasets.Value("string"), ["bird", "cat", "dog"]),
    ]:
        root = tmp_path / name / "data"
        root.mkdir(parents=True)
        table(labels, feature).to_parquet(str(root / "train-00000-of-00001.parquet"))
        splits = load_hf("hf", options(root.parent))
        assert splits.classes == classes, name
        order = [classes.index(str(v)) for v in (NAMES if name != "ints" else [2, 11, 20])]  # ints sort as numbers
        expected = torch.tensor([hot([order[i] for i in s]) for s in SETS])
        seen = torch.cat([splits.train.targets, splits.val.targets])
        assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist())), name


def test_without_a_validation_split_the_seeded_split_keeps_every_label_in_training(tmp_path):
    root = tmp_path / "one"
    class_sets().save_to_disk(str(root))
    splits = load_hf("hf", options(root))
    assert len(splits.train) + len(splits.val) == 8 and len(splits.val) >= 1
    assert (splits.train.targets.sum(dim=0) > 0).all()
    assert "iterative stratification" in splits.validation and "seed 0" in splits.validation
    again = load_hf("hf", options(root))
    assert again.val.rows == splits.val.rows and torch.equal(again.val.targets, splits.val.targets)
    assert all(torch.equal(splits.val.targets[i], splits.val[i][1]) for i in range(len(splits.val)))


def test_bad_multi_label_columns_are_one_line_naming_split_row_and_column(tmp_path):
    root = tmp_path / "empty"
    datasets.DatasetDict({"train": class_sets([[0], [], [1]])}).save_to_disk(str(root))
    fails(root, "split train row 1, column 'labels': the row has no label")
    root = tmp_path / "unseen"
    text = datasets.Sequence(datasets.Value("string"))
    datasets.DatasetDict({"train": table([["cat"], ["dog"]], text),
                          "validation": table([["cat"], ["dog", "horse"]], text)}).save_to_disk(str(root))
    fails(root, "split validation row 1, column 'labels': label 'horse' never appears in training")
    root = tmp_path / "one-per-row"
    datasets.DatasetDict({"train": table([0, 1], datasets.ClassLabel(names=NAMES))}).save_to_disk(str(root))
    fails(root, "column 'labels'", "holds one class per row", "a list of labels per row")
    root = tmp_path / "blank"
    datasets.DatasetDict({"train": table([["cat"], [" "]], text)}).save_to_disk(str(root))
    fails(root, "split train row 1, column 'labels': label ' ' is not an integer or non-empty text")


def test_a_single_label_run_refuses_a_column_of_lists(tmp_path):
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": class_sets()}).save_to_disk(str(root))
    fails(root, "split train, column 'labels'", "list of labels per row", "train with `tlcore run --task multilabel`",
          multilabel=False)


def test_a_multilabel_run_through_the_cli(tlcore_host, tlcore_cli, tmp_path):
    import json

    import tlcore_hf

    from tlcore.testing import TINY_BACKBONE

    tlcore_host.register(tlcore_hf, "hf")
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": class_sets(), "validation": class_sets([[2], [0, 1], [1]])}).save_to_disk(str(root))
    args = [
        "run", "--backbone", TINY_BACKBONE, "--dataset", "hf", "--data-dir", root, "--weights", "none", "--epochs", "1",
        "--batch-size", "4", "--image-size", "8", "--device", "cpu", "--workers", "0", "--output", tmp_path / "run",
        "--hf-label-column", "labels", "--task", "multilabel",
    ]
    result = tlcore_cli(*[str(a) for a in args])
    assert result.code == 0, result.err
    assert "val_map" in json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
