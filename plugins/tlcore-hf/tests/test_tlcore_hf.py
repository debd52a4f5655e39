"""tlcore-hf on small datasets this file writes with ``datasets`` itself; nothing is downloaded."""

from __future__ import annotations

import io
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: any attempt to reach the Hub fails
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

datasets = pytest.importorskip("datasets")

from tlcore_hf.dataset import load_hf  # noqa: E402

from tlcore import DataError, DatasetOptions  # noqa: E402

CLASSES = ["circle", "square"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """The parquet builder's cache goes to the test's folder, never to ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png(shade: int, size: int = 10) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), shade, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(count: int, label_feature=None, labels=None, image_key: str = "image", label_key: str = "label"):
    labels = labels if labels is not None else [i % 2 for i in range(count)]
    label_feature = label_feature or datasets.ClassLabel(names=CLASSES)
    features = datasets.Features({image_key: datasets.Image(), label_key: label_feature})
    rows = {image_key: [{"bytes": png(40 + 100 * (i % 2)), "path": None} for i in range(count)], label_key: labels}
    return datasets.Dataset.from_dict(rows, features=features)


def options(root, **extra):
    return DatasetOptions(data_dir=root, seed=0, val_fraction=0.25, extra=extra)


def test_a_saved_dataset_dict_gives_train_validation_and_test(tmp_path):
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": table(8), "validation": table(4), "test": table(2)}).save_to_disk(str(root))
    splits = load_hf("hf", options(root))
    assert splits.classes == CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 2)
    assert splits.validation == "split validation (4 images)"
    image, label = splits.train[1]
    assert image.size == (10, 10) and label == 1 and image.getpixel((0, 0))[0] == 140
    assert splits.train.targets == [0, 1] * 4


def test_a_single_saved_dataset_is_split_seeded_and_stratified(tmp_path):
    root = tmp_path / "one"
    table(8).save_to_disk(str(root))
    splits = load_hf("hf", options(root))
    assert len(splits.train) == 6 and len(splits.val) == 2
    assert sorted(label for label in splits.val.targets) == [0, 1]
    assert "holding out 2 of 8 images of split train" in splits.validation and "seed 0" in splits.validation
    assert splits.test is None


def test_parquet_files_with_text_labels_and_chosen_columns(tmp_path):
    root = tmp_path / "parquet"
    (root / "data").mkdir(parents=True)
    words = ["zebra", "ant", "zebra", "ant", "zebra", "ant"]
    text = table(6, datasets.Value("string"), words, image_key="picture", label_key="kind")
    text.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    table(2, datasets.Value("string"), ["ant", "zebra"], "picture", "kind").to_parquet(
        str(root / "data" / "validation-00000-of-00001.parquet")
    )
    splits = load_hf("hf", options(root, hf_image_column="picture", hf_label_column="kind"))
    assert splits.classes == ["ant", "zebra"]
    assert splits.train.targets == [1, 0, 1, 0, 1, 0]
    assert splits.val.targets == [0, 1]


def test_a_missing_column_split_or_label_is_one_line(tmp_path):
    root = tmp_path / "saved"
    oval = table(2, datasets.Value("string"), ["circle", "oval"])
    datasets.DatasetDict({"train": table(4), "validation": oval}).save_to_disk(str(root))
    with pytest.raises(DataError, match=r"no column 'img' \(columns: image, label\); name it with --hf-image-column"):
        load_hf("hf", options(root, hf_image_column="img"))
    with pytest.raises(DataError, match=r"no split 'training' \(splits: train, validation\)"):
        load_hf("hf", options(root, hf_split="training"))
    with pytest.raises(DataError, match=r"split validation row 1, column 'label': label 'oval' never appears in training"):
        load_hf("hf", options(root))
    with pytest.raises(DataError, match=r"--hf-val-split 'train' is the training split"):
        load_hf("hf", options(root, hf_val_split="train"))


def test_an_undecodable_image_names_the_split_and_row(tmp_path):
    root = tmp_path / "saved"
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(1), "path": None}, {"bytes": b"not a png", "path": None}], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}),
    )
    datasets.DatasetDict({"train": broken, "validation": broken}).save_to_disk(str(root))
    splits = load_hf("hf", options(root))
    splits.train[0]
    with pytest.raises(DataError, match="split train row 1"):
        splits.train[1]


def test_a_folder_without_a_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds no Hugging Face dataset"):
        load_hf("hf", options(tmp_path))


def test_a_run_and_eval_through_the_cli_with_the_plugin_options(tlcore_host, tlcore_cli, tmp_path):
    import json

    import tlcore_hf

    from tlcore.testing import TINY_BACKBONE

    tlcore_host.register(tlcore_hf, "hf")
    root = tmp_path / "saved"
    renamed = {"train": table(8, image_key="pic", label_key="y"), "holdout": table(4, image_key="pic", label_key="y"),
               "test": table(2, image_key="pic", label_key="y")}
    datasets.DatasetDict(renamed).save_to_disk(str(root))
    args = [
        "run", "--backbone", TINY_BACKBONE, "--dataset", "hf", "--data-dir", root, "--weights", "none", "--epochs", "1",
        "--batch-size", "4", "--image-size", "10", "--device", "cpu", "--workers", "0", "--output", tmp_path / "run",
        "--hf-image-column", "pic", "--hf-label-column", "y", "--hf-val-split", "holdout",
    ]
    result = tlcore_cli(*[str(a) for a in args])
    assert result.code == 0, result.err
    assert "split holdout (4 images)" in result.out + result.err
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["plugin_options"]
    assert recorded["hf_image_column"] == "pic" and recorded["hf_val_split"] == "holdout"
    result = tlcore_cli("eval", "--checkpoint", str(tmp_path / "run"), "--device", "cpu", "--split", "test", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["images"] == 2
    args[args.index(tmp_path / "run")] = tmp_path / "run2"
    bad = tlcore_cli(*[str(a) for a in args], "--hf-image-column", "nope")
    lines = [line for line in bad.err.splitlines() if line.strip()]
    assert bad.code == 2 and len(lines) == 1 and "no column 'nope'" in lines[0], bad.err


def test_a_damaged_saved_dataset_is_one_line(tmp_path):
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": table(4)}).save_to_disk(str(root))
    (root / "dataset_dict.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot be read as a Hugging Face dataset") as caught:
        load_hf("hf", options(root))
    assert "\n" not in str(caught.value)
