"""tlcore.files.cpu_copy: the snapshot behind every checkpoint and training-state write."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tlcore.files import atomic_save_tensors, cpu_copy


def test_a_channels_last_or_strided_tensor_becomes_one_contiguous_unshared_copy():
    weight = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    strided = torch.arange(24.0).reshape(4, 6)[:, ::2]  # a view: not contiguous, shares the base's storage
    for tensor in (weight, strided, torch.tensor(3, dtype=torch.int64), torch.zeros(0)):
        copy = cpu_copy(tensor)
        assert copy.is_contiguous() and copy.device.type == "cpu" and copy.dtype == tensor.dtype
        assert torch.equal(copy, tensor)
        if tensor.numel():
            assert copy.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr()
    snapshot = cpu_copy(weight)
    weight.add_(1.0)  # training goes on: the snapshot keeps the values it was taken with
    assert torch.equal(snapshot + 1.0, weight)


def test_tied_and_channels_last_weights_save_as_safetensors(tmp_path):
    """Two names for one tensor (tied weights) and channels-last weights: safetensors refuses both unless copied."""
    shared = torch.randn(3, 2)
    tensors = {"a": shared, "b": shared, "conv": torch.randn(2, 2, 3, 3).to(memory_format=torch.channels_last)}
    atomic_save_tensors(tmp_path / "w.safetensors", {k: cpu_copy(v) for k, v in tensors.items()}, {"format": "pt"})
    loaded = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
