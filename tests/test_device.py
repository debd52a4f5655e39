"""Choosing the device and the autocast precision (CUDA answers faked: these machines have no GPU)."""

import contextlib

import pytest
import torch

from tlcore.device import autocast_dtype, pick_device
from tlcore.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda reports one GPU, device 0, without touching a driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())


def test_cpu_and_bad_specs():
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not accepted; accepted: auto, cpu, cuda, cuda:N, mps"):
        pick_device("gpu0")


def test_cuda_always_carries_an_index(fake_cuda):
    # tensors placed on "cuda" report cuda:0, and torch.device("cuda") != torch.device("cuda:0")
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="does not exist; this machine has 1 CUDA devices"):
        pick_device("cuda:3")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_only_where_the_gpu_runs_it_natively(fake_cuda, monkeypatch, native, expected):
    # an older GPU (V100, T4) "supports" bf16 by emulation only: it must get fp16 with the gradient scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert autocast_dtype(torch.device("cuda", 0), enabled=True) == expected
    assert autocast_dtype(torch.device("cuda", 0), enabled=False) is None
    assert autocast_dtype(torch.device("cpu"), enabled=True) is None
