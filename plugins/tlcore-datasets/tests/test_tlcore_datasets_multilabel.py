"""Multi-label data (--task multilabel): the csv dataset's cells, imagefolder's labels.csv, the seeded split.

Every file is written here in the exact on-disk format: UTF-8 CSV with a header, tiny PNGs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tlcore_datasets_csv import write_images
from tlcore_datasets.csvdata import load_csv
from tlcore_datasets.imagefolder import load_imagefolder

from tlcore import ConfigError, DataError, DatasetOptions, multilabel_split

# (image, label cell): every separator the format allows, names in any order
TRAIN = [
    ("img/0.png", "cat"),
    ("img/1.png", "cat dog"),
    ("img/2.png", "dog;bird"),
    ("img/3.png", "bird | cat"),
    ("img/4.png", "dog"),
    ("img/5.png", "cat;dog|bird"),
    ("img/6.png", "bird"),
    ("img/7.png", "dog  cat"),
]
VAL = [("img/v0.png", "cat"), ("img/v1.png", "bird;dog")]
CLASSES = ["bird", "cat", "dog"]


def write_csv(path, rows, header="image,label") -> None:
    path.write_text(header + "\n" + "".join(f"{image},{label}\n" for image, label in rows), encoding="utf-8")


def csv_root(root, val: bool = True, test: bool = False):
    """root/img/*.png, train.csv (and val.csv, test.csv) with multi-label cells."""
    write_images(root, [image for image, _ in TRAIN + VAL] + ["img/t0.png"])
    write_csv(root / "train.csv", TRAIN)
    if val:
        write_csv(root / "val.csv", VAL)
    if test:
        write_csv(root / "test.csv", [("img/t0.png", "dog")])
    return root


def options(root, multilabel: bool = True, **extra) -> DatasetOptions:
    return DatasetOptions(data_dir=root, seed=0, val_fraction=0.25, multilabel=multilabel, extra=extra)


def hot(*names: str) -> list[float]:
    return [1.0 if name in names else 0.0 for name in CLASSES]


def fails(factory, root, *expected: str, multilabel: bool = True, **extra) -> str:
    with pytest.raises(DataError) as caught:
        factory("x", options(root, multilabel, **extra))
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    return message


def test_csv_cells_give_multi_hot_rows_over_the_sorted_union_of_training_names(tmp_path):
    splits = load_csv("csv", options(csv_root(tmp_path, test=True)))
    assert splits.multilabel and splits.classes == CLASSES
    targets = splits.train.targets
    assert targets.dtype == torch.float32 and targets.shape == (8, 3)
    expected = [hot("cat"), hot("cat", "dog"), hot("dog", "bird"), hot("bird", "cat"), hot("dog"),
                hot("cat", "dog", "bird"), hot("bird"), hot("dog", "cat")]
    assert targets.tolist() == expected
    path, row = splits.train.samples[5]
    assert path.endswith("img/5.png") and row.dtype == torch.float32 and row.tolist() == hot("bird", "cat", "dog")
    image, label = splits.train[1]
    assert image.size == (12, 12) and label.tolist() == hot("cat", "dog")
    assert splits.val.targets.tolist() == [hot("cat"), hot("bird", "dog")]
    assert splits.test.targets.tolist() == [hot("dog")]
    assert splits.validation == "val.csv (2 images)" and "multi-label" in splits.description


def test_without_val_csv_the_seeded_split_keeps_every_label_in_training_and_says_how(tmp_path):
    root = csv_root(tmp_path, val=False)
    splits = load_csv("csv", options(root))
    train, val = splits.train.targets, splits.val.targets
    assert len(train) + len(val) == 8 and 1 <= len(val) <= 2  # about a quarter, by label counts
    assert (train.sum(dim=0) > 0).all()  # every label has a training image
    assert f"holding out {len(val)} of 8 images of train.csv" in splits.validation
    assert "iterative stratification" in splits.validation and "seed 0" in splits.validation
    assert load_csv("csv", options(root)).val.samples[0][0] == splits.val.samples[0][0]  # the same seed, the same split


def test_multilabel_split_is_seeded_disjoint_sorted_and_near_the_fraction():
    rng = np.random.default_rng(5)
    targets = (rng.random((300, 6)) < [0.5, 0.3, 0.1, 0.05, 0.01, 0.7]).astype(np.float32)
    targets[0, 4] = 1.0  # a label with few images
    train, val = multilabel_split(targets, 0.2, 7)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(300))
    assert list(train) == sorted(train) and list(val) == sorted(val)
    assert abs(len(val) - 60) <= 3
    shares = targets[val].sum(axis=0) / targets.sum(axis=0)
    assert (np.abs(shares[:4] - 0.2) < 0.05).all(), shares  # each common label about a fifth in validation
    assert (targets[train].sum(axis=0) > 0).all()
    again = multilabel_split(targets, 0.2, 7)
    assert np.array_equal(again[1], val) and not np.array_equal(multilabel_split(targets, 0.2, 8)[1], val)


def test_multilabel_split_moves_a_label_s_only_image_back_to_training():
    # one label per image, 4 labels of 1 image each and one of 6: at 0.5 the rare labels must stay in training
    targets = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 4, 4, 4, 4, 4]]
    for seed in range(5):
        train, val = multilabel_split(targets, 0.5, seed)
        assert (targets[train].sum(axis=0) > 0).all() and len(val) >= 1
    with pytest.raises(ConfigError, match="val_fraction"):
        multilabel_split(targets, 1.0, 0)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing column", ("train.csv: line 1: no column 'label'", "--label-column")),
        ("empty label", ("train.csv: line 10, column 'label': the label is empty",)),
        ("separators only", ("train.csv: line 10, column 'label': ';|' names no class",)),
        ("unseen in val", ("val.csv: line 4, column 'label': label 'horse' never appears in train.csv",)),
        ("path escaping root", ("train.csv: line 10, column 'image': ../out.png leads outside the data folder",)),
        ("not utf-8", ("train.csv: line 10, column 2: byte 0xe9 is not UTF-8",)),
        ("header only", ("train.csv: it has a header (line 1) but no rows",)),
        ("two label sets", ("train.csv: line 10, column 'label': img/1.png is labelled 'bird' here and 'cat dog' on "
                            "line 3", "all its labels in one cell")),
    ],
)
def test_bad_multilabel_csv_files_are_one_line_naming_file_line_and_column(tmp_path, damage, expected):
    root = csv_root(tmp_path / "data")
    train = root / "train.csv"
    extra = {
        "empty label": "img/0.png,\n", "separators only": 'img/0.png," ;|"\n', "path escaping root": "../out.png,cat\n",
        "two label sets": "img/1.png,bird\n",
    }
    if damage in extra:
        train.write_text(train.read_text(encoding="utf-8") + extra[damage], encoding="utf-8")
    elif damage == "missing column":
        write_csv(train, TRAIN, header="image,labels")
    elif damage == "unseen in val":
        write_csv(root / "val.csv", [*VAL, ("img/0.png", "cat;horse")])
    elif damage == "not utf-8":
        train.write_bytes(train.read_bytes() + "img/0.png,caf\xe9\n".encode("latin-1"))
    else:
        train.write_text("image,label\n", encoding="utf-8")
    fails(load_csv, root, *expected)


def test_a_row_repeated_with_the_same_labels_in_another_order_is_used_once_and_noted(tmp_path):
    root = csv_root(tmp_path)
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("img/1.png,dog|cat\n")
    splits = load_csv("csv", options(root))
    assert len(splits.train) == 8
    assert any("train.csv lists 1 images again" in note and "lines 3 and 10" in note for note in splits.notes)


def test_a_single_label_run_refuses_a_file_that_looks_multi_label(tmp_path):
    root = csv_root(tmp_path)
    fails(load_csv, root, "train.csv: line 4, column 'label'", "'dog;bird'", "looks multi-label",
          "--task multilabel", multilabel=False)
    # words separated by spaces that are each a class of another row: two labels, not a third class
    write_csv(root / "train.csv", [("img/0.png", "cat"), ("img/1.png", "dog"), ("img/2.png", "cat dog")])
    fails(load_csv, root, "train.csv: line 4, column 'label'", "'cat dog' is the classes 'cat', 'dog'",
          "--task multilabel", multilabel=False)
    write_csv(root / "val.csv", [("img/v0.png", "cat dog")])
    write_csv(root / "train.csv", [("img/0.png", "cat"), ("img/1.png", "dog")])
    fails(load_csv, root, "val.csv: line 2", "never appears in train.csv", "--task multilabel", multilabel=False)


def test_a_single_label_class_name_with_spaces_stays_one_class(tmp_path):
    root = csv_root(tmp_path, val=False)
    rows = [(f"img/{i}.png", "golden retriever" if i % 2 else "cat") for i in range(8)]
    write_csv(root / "train.csv", rows)
    splits = load_csv("csv", options(root, multilabel=False))
    assert splits.classes == ["cat", "golden retriever"] and not splits.multilabel
    assert isinstance(splits.train.targets, list) and set(splits.train.targets) == {0, 1}
    # the same file read as multi-label: three classes
    assert load_csv("csv", options(root)).classes == ["cat", "golden", "retriever"]


# ---- imagefolder with labels.csv

def folder_root(root, val: bool = True, test: bool = True):
    """root/train/<any sub-folders>/*.png, root/val, root/test and root/labels.csv."""
    rows = [("train/a/0.png", "cat"), ("train/a/1.png", "cat dog"), ("train/b/deep/2.png", "dog;bird"),
            ("train/3.png", "bird|cat"), ("train/4.png", "dog")]
    if val:
        rows += [("val/5.png", "cat"), ("val/x/6.png", "bird dog")]
    if test:
        rows += [("test/7.png", "dog")]
    write_images(root, [image for image, _ in rows])
    write_csv(root / "labels.csv", rows)
    return root


def test_imagefolder_labels_csv_splits_by_top_folder(tmp_path):
    splits = load_imagefolder("imagefolder", options(folder_root(tmp_path)))
    assert splits.multilabel and splits.classes == CLASSES
    assert splits.train.targets.tolist() == [hot("cat"), hot("cat", "dog"), hot("dog", "bird"), hot("bird", "cat"),
                                             hot("dog")]
    assert splits.val.targets.tolist() == [hot("cat"), hot("bird", "dog")]
    assert splits.test.targets.tolist() == [hot("dog")]
    assert splits.validation == "val/ (2 images listed in labels.csv)"
    image, label = splits.train[2]
    assert image.size == (12, 12) and label.tolist() == hot("bird", "dog")
    assert splits.notes == ["not used in training or validation: test/ (1 images), a test split (tlcore eval --split test)"]


def test_imagefolder_images_not_in_labels_csv_are_named_and_skipped(tmp_path):
    root = folder_root(tmp_path)
    write_images(root, ["train/a/extra.png", "val/stray.png"])
    (root / "train" / "notes.txt").write_text("not an image", encoding="utf-8")
    (root / "other").mkdir()
    splits = load_imagefolder("imagefolder", options(root))
    assert len(splits.train) == 5 and len(splits.val) == 2
    unlisted = next(note for note in splits.notes if "labels.csv does not list" in note)
    assert unlisted.startswith("not used: 2 images") and "extra.png" in unlisted and "stray.png" in unlisted
    assert any("1 files that are not images" in note for note in splits.notes)
    assert any("folders other" in note for note in splits.notes)


def test_imagefolder_without_val_holds_out_and_test_validates_when_alone(tmp_path):
    splits = load_imagefolder("imagefolder", options(folder_root(tmp_path / "a", val=False, test=False)))
    assert len(splits.train) + len(splits.val) == 5 and splits.test is None
    assert "iterative stratification" in splits.validation and (splits.train.targets.sum(dim=0) > 0).all()
    splits = load_imagefolder("imagefolder", options(folder_root(tmp_path / "b", val=False)))
    assert splits.validation == "test/ (1 images listed in labels.csv); there are no val/valid/validation images"
    assert splits.test is None


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing column", ("labels.csv: line 1: no column 'image'",)),
        ("empty label", ("labels.csv: line 10, column 'label': the label is empty",)),
        ("path escaping root", ("labels.csv: line 10, column 'image': ../out.png leads outside the data folder",)),
        ("not utf-8", ("labels.csv: line 10, column 2: byte 0xe9 is not UTF-8",)),
        ("header only", ("labels.csv: it has a header (line 1) but no rows",)),
        ("two label sets", ("labels.csv: line 10, column 'label': train/4.png is labelled 'cat' here and 'dog'",)),
        ("missing image", ("labels.csv: line 10, column 'image': the image train/gone.png is missing",)),
        ("outside the splits", ("labels.csv: line 10, column 'image': elsewhere/9.png is not in the train, val or "
                                "test folder",)),
        ("unseen in val", ("labels.csv: line 9, column 'label': label 'horse' never appears in the train/ rows",)),
        ("no labels.csv", ("has no labels.csv",)),
        ("no train folder", ("has no train folder",)),
    ],
)
def test_bad_labels_csv_is_one_line_naming_file_line_and_column(tmp_path, damage, expected):
    root = folder_root(tmp_path / "data")
    labels = root / "labels.csv"
    extra = {"empty label": "train/4.png,\n", "path escaping root": "../out.png,cat\n",
             "two label sets": "train/4.png,cat\n", "missing image": "train/gone.png,cat\n",
             "outside the splits": "elsewhere/9.png,cat\n", "unseen in val": "val/5.png,horse cat\n"}
    write_images(tmp_path, ["out.png"])
    write_images(root, ["elsewhere/9.png"])
    if damage == "unseen in val":
        write_csv(labels, [(line.split(",")[0], line.split(",")[1]) for line in labels.read_text().splitlines()[1:]
                           if not line.startswith("val/5")])
    if damage in extra:
        labels.write_text(labels.read_text(encoding="utf-8") + extra[damage], encoding="utf-8")
    elif damage == "missing column":
        labels.write_text(labels.read_text(encoding="utf-8").replace("image,label", "file,label", 1), encoding="utf-8")
    elif damage == "not utf-8":
        labels.write_bytes(labels.read_bytes() + "train/4.png,caf\xe9\n".encode("latin-1"))
    elif damage == "header only":
        labels.write_text("image,label\n", encoding="utf-8")
    elif damage == "no labels.csv":
        labels.unlink()
    elif damage == "no train folder":
        (root / "train").rename(root / "training")
    fails(load_imagefolder, root, *expected)


def test_a_single_label_imagefolder_names_an_unused_labels_csv(tmp_path):
    root = folder_root(tmp_path, val=False, test=False)
    splits = load_imagefolder("imagefolder", options(root, multilabel=False))
    assert splits.classes == ["a", "b"] and not splits.multilabel
    assert any("not used:" in note and "labels.csv" in note for note in splits.notes)
    flat = tmp_path / "flat"
    write_images(flat, ["train/0.png", "train/1.png"])
    write_csv(flat / "labels.csv", [("train/0.png", "cat"), ("train/1.png", "dog")])
    fails(load_imagefolder, flat, "no class folders",
          "labels.csv lists multi-label images: train with `tlcore run --task multilabel`", multilabel=False)


def test_any_bytes_as_labels_csv_or_a_multilabel_train_csv_give_data_or_one_line(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    folder, table = folder_root(tmp_path / "folder"), csv_root(tmp_path / "csv")
    cells = st.sampled_from(["image", "label", "train/a/0.png", "val/5.png", "img/0.png", "img/v0.png", "cat", "dog",
                             "cat;dog", "|", " ", "", "../x", '"', '"a,b"', "\x00", "caf\xe9", "/etc/passwd", "train"])
    lines = st.lists(st.lists(cells, min_size=0, max_size=4).map(",".join), max_size=6).map("\n".join)
    data = st.one_of(lines.map(lambda text: text.encode("utf-8", errors="replace")), st.binary(max_size=120))

    @settings(max_examples=80, deadline=None)
    @given(data=data, which=st.sampled_from(["labels.csv", "train.csv", "val.csv"]))
    def check(data, which):
        root, factory = (folder, load_imagefolder) if which == "labels.csv" else (table, load_csv)
        original = (root / which).read_bytes()
        (root / which).write_bytes(data)
        try:
            splits = factory("x", options(root))
            assert splits.multilabel and len(splits.train) >= 1 and len(splits.val) >= 1
            assert splits.train.targets.shape[1] == len(splits.classes)
        except DataError as error:
            assert "\n" not in str(error) and str(root) in str(error)
        finally:
            (root / which).write_bytes(original)

    check()
