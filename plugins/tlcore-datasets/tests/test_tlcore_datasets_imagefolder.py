"""imagefolder: class folders of JPEG/PNG files, with and without a val folder."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from PIL import Image
from tlcore_datasets.imagefolder import ImageFileDataset, load_imagefolder
from tlcore_datasets_testkit import save_image

from tlcore.dataset import DatasetOptions
from tlcore.errors import DataError


def make_tree(root: Path, split: str, per_class: dict[str, int]) -> None:
    for class_name, count in per_class.items():
        for i in range(count):
            ext = ".jpg" if i % 2 == 0 else ".PNG"
            save_image(root / split / class_name / f"img{i:02d}{ext}", value=i)


def load(root, **kwargs):
    return load_imagefolder("imagefolder", DatasetOptions(data_dir=root, **kwargs))


def test_train_and_val_folders(tmp_path):
    make_tree(tmp_path, "train", {"cat": 3, "dog": 2})
    make_tree(tmp_path, "val", {"cat": 1, "dog": 1})
    save_image(tmp_path / "train" / "cat" / "gray.png", mode="L")
    save_image(tmp_path / "train" / "dog" / "alpha.png", mode="RGBA")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / ".hidden.jpg").write_text("AppleDouble junk")
    splits = load(tmp_path)
    assert splits.classes == ["cat", "dog"]
    assert splits.flip_invariant is True
    assert len(splits.train) == 7 and len(splits.val) == 2
    modes = {}
    for i in range(len(splits.train)):
        image, label = splits.train[i]
        assert isinstance(image, Image.Image) and label in (0, 1)
        modes[Path(splits.train.samples[i][0]).name] = image.mode
    assert modes["gray.png"] == "L" and modes["alpha.png"] == "RGBA" and modes["img00.jpg"] == "RGB"
    assert "notes.txt" not in modes and ".hidden.jpg" not in modes
    assert splits.train.targets == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_val_folder_aliases(tmp_path, val_name):
    make_tree(tmp_path, "train", {"a": 2, "b": 2})
    make_tree(tmp_path, val_name, {"a": 1, "b": 1})
    assert len(load(tmp_path).val) == 2


def test_seeded_split_without_val(tmp_path):
    make_tree(tmp_path, "train", {"a": 10, "b": 5, "c": 2})
    first = load(tmp_path, seed=3, val_fraction=0.2)
    again = load(tmp_path, seed=3, val_fraction=0.2)
    other = load(tmp_path, seed=4, val_fraction=0.2)
    assert first.train.samples == again.train.samples and first.val.samples == again.val.samples
    assert first.val.samples != other.val.samples
    assert sorted(first.val.targets) == [0, 0, 1, 2]  # stratified: 2 of a, 1 of b, 1 of c
    assert len(first.train) + len(first.val) == 17
    assert not set(first.train.samples) & set(first.val.samples)
    assert set(first.train.targets) == {0, 1, 2}


def test_class_folders_directly_under_root(tmp_path):
    for name in ("x", "y"):
        for i in range(3):
            save_image(tmp_path / name / f"{i}.bmp", value=i)
    splits = load(tmp_path, val_fraction=0.34)
    assert splits.classes == ["x", "y"] and len(splits.val) == 2


def test_class_mismatch(tmp_path):
    make_tree(tmp_path, "train", {"cat": 2, "dog": 2})
    make_tree(tmp_path, "val", {"cat": 1, "bird": 1})
    with pytest.raises(DataError, match="only in train: dog; only in val: bird"):
        load(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match=f"no class folders in {tmp_path}"):
        load(tmp_path)


def test_no_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"no images found in {tmp_path / 'train'}"):
        load(tmp_path)


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path, "train", {"cat": 2})
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="without images.*dog"):
        load(tmp_path)


def test_missing_or_unset_dir(tmp_path):
    with pytest.raises(DataError, match="needs --data-dir"):
        load(None)
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_unreadable_image_names_file(tmp_path):
    make_tree(tmp_path, "train", {"a": 2})
    make_tree(tmp_path, "val", {"a": 1})
    (tmp_path / "val" / "a" / "img00.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="img00.jpg"):
        load(tmp_path).val[0]


def test_dataset_pickles(tmp_path):
    make_tree(tmp_path, "train", {"a": 2, "b": 2})
    splits = load(tmp_path, val_fraction=0.5)
    copy = pickle.loads(pickle.dumps(splits.train))
    assert isinstance(copy, ImageFileDataset) and copy.samples == splits.train.samples
    assert copy[0][0].size == (6, 5)
