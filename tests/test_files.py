"""Atomic file writing: a file is whole or absent, with the mode a plain open() would give it."""

import os

import pytest
import torch
from safetensors import safe_open

from tlcore.files import FILE_MODE, atomic_save_tensors


def test_tensors_are_written_whole_with_metadata_and_the_usual_mode(tmp_path):
    path = tmp_path / "weights.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    atomic_save_tensors(path, tensors, {"note": "kept"})
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"note": "kept"}
        assert all(torch.equal(handle.get_tensor(key), value) for key, value in tensors.items())
    assert os.stat(path).st_mode & 0o777 == FILE_MODE
    assert os.listdir(tmp_path) == ["weights.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "weights.safetensors"
    atomic_save_tensors(path, {"a": torch.zeros(3)}, {})
    before = path.read_bytes()
    shared = torch.zeros(4)
    with pytest.raises(RuntimeError):  # safetensors refuses tensors that share memory
        atomic_save_tensors(path, {"a": shared, "b": shared[:2]}, {})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["weights.safetensors"]
