"""The csv dataset: train.csv/val.csv/test.csv manifests under --data-dir, written here in the exact format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tlcore_datasets.csvdata import load_csv

from tlcore import DataError, DatasetOptions


def write_images(root: Path, names: list[str], size: int = 12) -> None:
    """Tiny PNGs at ``root/<name>``, shade by position."""
    for index, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shade = np.full((size, size, 3), (index * 37) % 255, dtype=np.uint8)
        Image.fromarray(shade).save(path)


def write_dataset(root: Path, per_class: int = 5, classes=("cat", "dog"), val: bool = False, test: bool = False) -> Path:
    """root/img/<class>_<i>.png with train.csv (and val.csv, test.csv) listing them as image,label."""
    rows = {"train": [], "val": [], "test": []}
    for label in classes:
        for i in range(per_class):
            rows["train"].append((f"img/{label}_{i}.png", label))
        rows["val"].append((f"img/{label}_v.png", label))
        rows["test"].append((f"img/{label}_t.png", label))
    write_images(root, [path for split in rows.values() for path, _ in split])
    for split, wanted in (("train", True), ("val", val), ("test", test)):
        if wanted:
            text = "image,label\n" + "".join(f"{path},{label}\n" for path, label in rows[split])
            (root / f"{split}.csv").write_text(text, encoding="utf-8")
    return root


def load(root: Path, **extra) -> object:
    return load_csv("csv", DatasetOptions(data_dir=root, seed=0, val_fraction=0.2, extra=extra))


def test_train_csv_alone_is_split_seeded_and_stratified_and_says_so(tmp_path):
    splits = load(write_dataset(tmp_path))
    assert splits.classes == ["cat", "dog"]
    assert len(splits.train) == 8 and len(splits.val) == 2
    assert sorted(label for _, label in splits.val.samples) == [0, 1]  # one of each class
    assert "holding out 2 of 10 images of train.csv" in splits.validation and "seed 0" in splits.validation
    assert splits.test is None
    image, label = splits.train[0]
    assert image.size == (12, 12) and label in (0, 1)
    again = load(tmp_path)
    assert again.val.samples == splits.val.samples  # the same seed, the same split


def test_val_and_test_files_are_used_and_test_is_a_split(tmp_path):
    splits = load(write_dataset(tmp_path, val=True, test=True))
    assert len(splits.train) == 10 and len(splits.val) == 2 and len(splits.test) == 2
    assert splits.validation == "val.csv (2 images)"
    assert any("test.csv (2 images)" in note for note in splits.notes)


def test_absolute_paths_other_columns_and_a_byte_order_mark(tmp_path):
    write_images(tmp_path / "pics", ["a1.png", "a2.png", "b1.png", "b2.png"])
    rows = [(tmp_path / "pics" / name, name[0]) for name in ("a1.png", "a2.png", "b1.png", "b2.png")]
    text = "id,file,kind\n" + "".join(f"{i},{path},{label}\n" for i, (path, label) in enumerate(rows))
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    splits = load(tmp_path, image_column="file", label_column="kind")
    assert splits.classes == ["a", "b"]
    assert len(splits.train) + len(splits.val) == 4


def test_missing_unreadable_and_linked_out_images_are_skipped_and_named(tmp_path):
    root = write_dataset(tmp_path / "root")
    outside = tmp_path / "elsewhere.png"
    write_images(tmp_path, ["elsewhere.png"])
    os.symlink(outside, root / "img" / "link.png")
    (root / "img" / "folder.png").mkdir()
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("img/gone.png,cat\nimg/link.png,dog\nimg/folder.png,dog\n")
    splits = load(root)
    assert len(splits.train) + len(splits.val) == 10
    note = splits.notes[0]
    assert note.startswith("skipped 3 rows of train.csv")
    assert "line 12 img/gone.png (missing)" in note and "outside the data folder" in note
    assert "img/folder.png (not a regular file)" in note


def test_duplicate_rows_are_used_once_and_reported(tmp_path):
    root = write_dataset(tmp_path, val=True)
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("img/cat_0.png,cat\n./img/cat_1.png,cat\n")
    with open(root / "val.csv", "a", encoding="utf-8") as handle:
        handle.write("img/dog_0.png,dog\n")
    splits = load(root)
    assert len(splits.train) == 10
    assert any("train.csv lists 2 images again" in note and "lines 2 and 12" in note for note in splits.notes)
    assert any("listed in both train.csv and val.csv" in note and "dog_0.png" in note for note in splits.notes)


def _fails(root: Path, *expected: str, **extra) -> str:
    with pytest.raises(DataError) as caught:
        load(root, **extra)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    return message


def test_a_missing_column_names_the_file_line_and_column(tmp_path):
    root = write_dataset(tmp_path)
    _fails(root, "train.csv: line 1", "no column 'path'", "--image-column", image_column="path")


def test_an_empty_label_names_the_file_line_and_column(tmp_path):
    root = write_dataset(tmp_path)
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("img/cat_0.png, \n")
    _fails(root, "train.csv: line 12, column 'label'", "label is empty")


def test_a_label_never_seen_in_training_in_val_names_it(tmp_path):
    root = write_dataset(tmp_path, val=True)
    with open(root / "val.csv", "a", encoding="utf-8") as handle:
        handle.write("img/cat_0.png,horse\n")
    _fails(root, "val.csv: line 4, column 'label'", "'horse' never appears in train.csv")


def test_a_path_climbing_out_of_root_names_the_file_line_and_column(tmp_path):
    root = write_dataset(tmp_path / "root")
    write_images(tmp_path, ["secret.png"])
    with open(root / "train.csv", "a", encoding="utf-8") as handle:
        handle.write("../secret.png,cat\n")
    _fails(root, "train.csv: line 12, column 'image'", "../secret.png leads outside the data folder")


def test_a_file_that_is_not_utf8_names_the_line_and_column(tmp_path):
    root = write_dataset(tmp_path)
    with open(root / "train.csv", "ab") as handle:
        handle.write("img/cat_0.png,caf\xe9\n".encode("latin-1"))
    _fails(root, "train.csv: line 12, column 2", "byte 0xe9 is not UTF-8")


def test_a_header_only_file_and_an_empty_file_are_refused(tmp_path):
    root = write_dataset(tmp_path)
    (root / "train.csv").write_text("image,label\n", encoding="utf-8")
    _fails(root, "train.csv: it has a header (line 1) but no rows")
    (root / "train.csv").write_text("", encoding="utf-8")
    _fails(root, "train.csv is empty")


def test_one_image_with_two_labels_and_broken_quoting_are_refused(tmp_path):
    root = write_dataset(tmp_path)
    original = (root / "train.csv").read_text(encoding="utf-8")
    (root / "train.csv").write_text(original + "img/cat_0.png,dog\n", encoding="utf-8")
    _fails(root, "line 12, column 'label'", "labelled 'dog' here and 'cat' on line 2")
    (root / "train.csv").write_text(original + 'img/cat_0.png,"ca"t\n', encoding="utf-8")
    _fails(root, "train.csv: line 12", "not valid CSV")
    (root / "train.csv").write_text(original + "img/cat_0.png,cat,extra\n", encoding="utf-8")
    _fails(root, "train.csv: line 12", "3 cells, but the header has 2 columns")


def test_no_train_csv_and_no_data_dir_are_refused(tmp_path):
    _fails(tmp_path, "has no train.csv")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_csv("csv", DatasetOptions())


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("csvfuzz"), val=True)


def _fuzz_bytes():
    from hypothesis import strategies as st

    cells = st.sampled_from(["image", "label", "img/cat_0.png", "img/dog_1.png", "cat", "dog", "", " ", "../x", '"',
                             '"a,b"', "\x00", "caf\xe9", "/etc/passwd", "img", "img/cat_0.png;dog"])
    rows = st.lists(st.lists(cells, min_size=0, max_size=4).map(",".join), max_size=6)
    text = rows.map(lambda lines: "\n".join(lines))
    encoded = st.tuples(text, st.sampled_from(["utf-8", "latin-1", "utf-16"])).map(
        lambda pair: pair[0].encode(pair[1], errors="replace")
    )
    return st.one_of(encoded, st.binary(max_size=200))


def test_any_bytes_as_a_csv_file_give_data_or_one_line(fuzz_root):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=_fuzz_bytes(), which=pytest.importorskip("hypothesis").strategies.sampled_from(["train.csv", "val.csv"]))
    def check(data, which):
        original = (fuzz_root / which).read_bytes()
        (fuzz_root / which).write_bytes(data)
        try:
            splits = load(fuzz_root)
            assert len(splits.train) >= 1 and len(splits.val) >= 1
        except DataError as error:
            assert "\n" not in str(error) and str(fuzz_root) in str(error)
        finally:
            (fuzz_root / which).write_bytes(original)

    check()


def test_a_header_naming_a_used_column_twice_is_refused_other_repeats_are_not(tmp_path):
    root = write_dataset(tmp_path)
    text = (root / "train.csv").read_text(encoding="utf-8").splitlines()
    (root / "train.csv").write_text("\n".join(["image,label,,"] + [row + ",," for row in text[1:]]) + "\n", encoding="utf-8")
    assert len(load(root).classes) == 2
    (root / "train.csv").write_text("\n".join(["image,label,label"] + [row + ",x" for row in text[1:]]) + "\n",
                                    encoding="utf-8")
    _fails(root, "train.csv: line 1: the header names column 'label' twice")
