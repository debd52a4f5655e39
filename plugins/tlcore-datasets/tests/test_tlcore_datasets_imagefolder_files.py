"""imagefolder: every file is used or reported; special files never opened; links followed, cycles caught."""

from __future__ import annotations

import os
import socket

import pytest
from tlcore_datasets.imagefolder import load_imagefolder
from tlcore_datasets_testkit import save_image

from tlcore.dataset import DatasetOptions
from tlcore.errors import DataError


def load(root, **kwargs):
    return load_imagefolder("imagefolder", DatasetOptions(data_dir=root, **kwargs))


def tree(root, split, per_class):
    for name, count in per_class.items():
        for index in range(count):
            save_image(root / split / name / f"{name}{index}.png", value=index)


def names(samples):
    return sorted(os.path.basename(path) for path, _ in samples)


def test_pipes_sockets_and_device_files_are_skipped_and_named(tmp_path):
    tree(tmp_path, "train", {"a": 2, "b": 2})
    tree(tmp_path, "val", {"a": 1, "b": 1})
    os.mkfifo(tmp_path / "train" / "a" / "pipe.jpg")  # opening it would block the scan forever
    os.symlink("/dev/zero", tmp_path / "train" / "b" / "zero.png")  # reading it would never end
    os.symlink(tmp_path / "missing.png", tmp_path / "train" / "b" / "gone.png")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "val" / "a" / "sock.jpg"))
        splits = load(tmp_path)
    finally:
        server.close()
    assert names(splits.train.samples) == ["a0.png", "a1.png", "b0.png", "b1.png"]
    assert names(splits.val.samples) == ["a0.png", "b0.png"]
    skipped = splits.notes[0]
    assert skipped.startswith("skipped 4 entries that are not readable files: ")
    for entry in ("pipe.jpg (a named pipe)", "zero.png (a device file)", "gone.png (a broken link)", "sock.jpg (a socket)"):
        assert entry in skipped


def test_linked_folders_are_followed_and_cycles_stop(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    tree(data, "train", {"a": 2})
    tree(elsewhere, "more", {"b": 3})
    os.symlink(elsewhere / "more" / "b", data / "train" / "b")  # a whole class linked in
    os.symlink(elsewhere / "more" / "b", data / "train" / "a" / "linked")  # a subfolder linked into a class
    os.symlink(data / "train" / "a", data / "train" / "a" / "loop")  # a cycle: a/loop/loop/loop/...
    splits = load(data, val_fraction=0.2)
    everything = splits.train.samples + splits.val.samples
    assert splits.classes == ["a", "b"]
    labels = {(os.path.relpath(path, data), label) for path, label in everything}
    assert labels == {
        ("train/a/a0.png", 0),
        ("train/a/a1.png", 0),
        ("train/a/linked/b0.png", 0),
        ("train/a/linked/b1.png", 0),
        ("train/a/linked/b2.png", 0),
        ("train/b/b0.png", 1),
        ("train/b/b1.png", 1),
        ("train/b/b2.png", 1),
    }
    assert any("train/a/loop (a link to a folder already scanned)" in note for note in splits.notes)


def test_test_folder_validates_when_there_is_no_val_folder(tmp_path):
    tree(tmp_path, "train", {"a": 3, "b": 3})
    tree(tmp_path, "test", {"a": 2, "b": 2})
    splits = load(tmp_path)
    assert len(splits.train) == 6 and len(splits.val) == 4 and splits.test is None
    assert all("/test/" in path for path, _ in splits.val.samples)
    assert splits.validation == "test/ (4 images); there is no val/ folder"
    assert splits.run_notes()[0] == "validation: test/ (4 images); there is no val/ folder"


def test_test_folder_beside_val_is_a_test_split_reported(tmp_path):
    tree(tmp_path, "train", {"a": 2, "b": 2})
    tree(tmp_path, "valid", {"a": 1, "b": 1})
    tree(tmp_path, "test", {"a": 3, "b": 3})
    splits = load(tmp_path)
    assert splits.validation == "valid/ (2 images)"
    assert len(splits.test) == 6
    assert any(note.startswith("not used in training or validation: ") and "(6 images)" in note for note in splits.notes)


def test_test_folder_with_other_classes_is_refused_as_validation(tmp_path):
    tree(tmp_path, "train", {"a": 2, "b": 2})
    tree(tmp_path, "test", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="only in train: b; only in test: c"):
        load(tmp_path)


def test_holding_out_says_how_many_and_the_seed(tmp_path):
    tree(tmp_path, "train", {"a": 10, "b": 10})
    splits = load(tmp_path, seed=0, val_fraction=0.2)
    assert splits.validation == "holding out 4 of 20 train images, seed 0"


def test_files_left_out_are_reported(tmp_path):
    tree(tmp_path, "train", {"a": 2, "b": 2})
    tree(tmp_path, "val", {"a": 1, "b": 1})
    save_image(tmp_path / "train" / "stray.png")  # outside any class folder
    (tmp_path / "train" / "a" / "labels.csv").write_text("x")
    (tmp_path / "train" / "a" / ".DS_Store").write_text("x")  # hidden: ignored without a word
    (tmp_path / "extra").mkdir()
    notes = "\n".join(load(tmp_path).notes)
    assert "not used: folders extra in" in notes
    assert "1 image files directly in" in notes and "stray.png" in notes
    assert "1 files that are not images by their extension" in notes and "labels.csv" in notes
    assert ".DS_Store" not in notes


def test_files_are_listed_in_the_order_os_walk_gave(tmp_path):
    # files of a folder first, then its subfolders, each sorted: the seeded split depends on this order
    from tlcore_datasets.imagefolder import _scan

    tree(tmp_path, "train", {"a": 2})
    for name in ("z/in_z.png", "b/in_b.png", "zz.png", "b/c/deep.png"):
        save_image(tmp_path / "train" / "a" / name)
    samples = _scan(tmp_path / "train", ["a"], [], [])
    walked = [os.path.relpath(path, tmp_path / "train" / "a") for path, _ in samples]
    assert walked == ["a0.png", "a1.png", "zz.png", "b/in_b.png", "b/c/deep.png", "z/in_z.png"]
    expected = []
    for folder, dirnames, filenames in os.walk(tmp_path / "train" / "a"):
        dirnames.sort()
        expected += [os.path.relpath(os.path.join(folder, f), tmp_path / "train" / "a") for f in sorted(filenames)]
    assert walked == expected
