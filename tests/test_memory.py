"""tlcore.memory: per-epoch peak memory, and out-of-memory errors as one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlcore import memory
from tlcore.memory import PeakMemory, is_out_of_memory, out_of_memory_message

CPU = torch.device("cpu")


def _clear_refs_works() -> bool:
    probe = PeakMemory(CPU)
    probe.reset()
    return not probe.host_since_start


CLEAR_REFS = _clear_refs_works()
needs_clear_refs = pytest.mark.skipif(
    not CLEAR_REFS, reason="/proc/self/clear_refs cannot reset the RSS high-water mark here (not Linux 4.0+, or refused)"
)


# ---- host peak ----


@needs_clear_refs
def test_host_peak_sees_an_allocation_and_falls_again_after_reset():
    meter = PeakMemory(CPU)
    meter.reset()
    baseline = meter.read()["peak_host_mb"]
    block = np.ones(200 * 1024 * 1024 // 8)  # ~200 MiB, every page touched
    del block
    grown = meter.read()["peak_host_mb"]
    assert grown - baseline >= 150, (baseline, grown)

    meter.reset()
    assert not meter.host_since_start
    again = meter.read()["peak_host_mb"]
    assert again < grown - 150, (grown, again)


def test_cpu_read_has_a_host_figure_and_no_gpu_figures():
    meter = PeakMemory(CPU)
    meter.reset()
    figures = meter.read()
    assert set(figures) == {"peak_host_mb", "peak_gpu_mb", "peak_gpu_reserved_mb"}
    assert isinstance(figures["peak_host_mb"], float) and figures["peak_host_mb"] > 0
    assert figures["peak_host_mb"] == round(figures["peak_host_mb"], 1)
    assert figures["peak_gpu_mb"] is None and figures["peak_gpu_reserved_mb"] is None


def test_no_cuda_function_is_called_off_cuda(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a CUDA function was called for a CPU device")

    for name in ("reset_peak_memory_stats", "max_memory_allocated", "max_memory_reserved", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    for device in (CPU, torch.device("mps")):
        meter = PeakMemory(device)
        meter.reset()
        assert meter.read()["peak_gpu_mb"] is None
        assert "ran out of memory" in out_of_memory_message(device, 8, 1, 224, "training")


def test_refused_clear_refs_falls_back_to_the_lifetime_peak(monkeypatch):
    monkeypatch.setattr(memory, "_PROC_CLEAR_REFS", "/nonexistent/clear_refs")
    meter = PeakMemory(CPU)
    meter.reset()
    assert meter.host_since_start
    lifetime = memory._lifetime_peak_bytes()
    assert meter.read()["peak_host_mb"] == pytest.approx(lifetime / 2**20, abs=0.2)


def test_ignored_clear_refs_is_not_trusted(monkeypatch):
    # A sandbox that accepts the write but leaves the high-water mark far above the RSS.
    monkeypatch.setattr(memory, "_PROC_CLEAR_REFS", "/dev/null")
    monkeypatch.setattr(memory, "_status_kib", lambda *fields: {"VmHWM": 900_000, "VmRSS": 100_000})
    meter = PeakMemory(CPU)
    meter.reset()
    assert meter.host_since_start


def test_before_any_reset_the_figure_is_since_start():
    assert PeakMemory(CPU).host_since_start


# ---- GPU peak, with torch.cuda mocked ----


def test_cuda_branch_resets_and_reads_the_allocator_peaks(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("alloc", device)) or 3 * 2**29)
    monkeypatch.setattr(
        torch.cuda, "max_memory_reserved", lambda device=None: calls.append(("reserved", device)) or 2 * 2**30 + 2**20 // 3
    )
    device = torch.device("cuda:1")
    meter = PeakMemory(device)
    meter.reset()
    figures = meter.read()
    assert figures["peak_gpu_mb"] == 1536.0
    assert figures["peak_gpu_reserved_mb"] == 2048.3
    assert figures["peak_host_mb"] > 0
    assert calls == [("reset", device), ("alloc", device), ("reserved", device)]


# ---- is_out_of_memory ----


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.cuda.OutOfMemoryError("anything"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
    ],
)
def test_out_of_memory_errors_are_recognised(error):
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x512 and 256x10)"),
        ValueError("out of memory"),  # not a torch error type
        MemoryError(),
        KeyboardInterrupt(),
    ],
)
def test_other_errors_are_not(error):
    assert not is_out_of_memory(error)


def test_an_oom_wrapped_by_raise_from_is_recognised():
    class HookError(Exception):
        pass

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as oom:
            raise HookError("plugin hook failed") from oom
    except HookError as wrapped:
        assert is_out_of_memory(wrapped)

    cyclic = HookError("a")
    cyclic.__cause__ = HookError("b")
    cyclic.__cause__.__cause__ = cyclic
    assert not is_out_of_memory(cyclic)


def test_out_of_memory_classes_are_found_by_name():
    assert torch.OutOfMemoryError in memory._OOM_TYPES
    assert torch.cuda.OutOfMemoryError in memory._OOM_TYPES


# ---- out_of_memory_message ----


def _cuda_with_total(monkeypatch, total_bytes):
    class Props:
        total_memory = total_bytes

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_message_names_the_device_and_keeps_the_effective_batch(monkeypatch):
    _cuda_with_total(monkeypatch, 80 * 2**30)
    text = out_of_memory_message(torch.device("cuda"), 256, 1, 224, "training")
    assert "\n" not in text
    assert text.startswith("CUDA ran out of memory on cuda:0 (80.0 GiB) during training at batch size 256 (224 px): ")
    assert "--batch-size 128 --accumulate 2 keeps the effective batch of 256" in text
    assert "--image-size" in text


def test_message_doubles_an_existing_accumulation(monkeypatch):
    _cuda_with_total(monkeypatch, 24 * 2**30)
    text = out_of_memory_message(torch.device("cuda:3"), 64, 4, 384, "validation")
    assert "on cuda:3 (24.0 GiB) during validation at batch size 64 (384 px)" in text
    assert "--batch-size 32 --accumulate 8 keeps the effective batch of 256" in text


def test_message_odd_batch_keeps_the_effective_batch_exactly(monkeypatch):
    _cuda_with_total(monkeypatch, 16 * 2**30)
    text = out_of_memory_message(torch.device("cuda:0"), 75, 1, 224, "feature caching")
    assert "--batch-size 25 --accumulate 3 keeps the effective batch of 75" in text


def test_message_prime_batch_says_what_the_effective_batch_becomes(monkeypatch):
    _cuda_with_total(monkeypatch, 16 * 2**30)
    text = out_of_memory_message(torch.device("cuda:0"), 127, 1, 224, "training")
    assert "--batch-size 63 --accumulate 2 gives an effective batch of 126 (now 127)" in text


def test_suggested_batch_is_smaller_and_never_zero():
    for batch_size in range(2, 300):
        for accumulate in (1, 2, 3, 7):
            smaller, more = memory._smaller_batch(batch_size, accumulate)
            assert 1 <= smaller <= batch_size // 2, (batch_size, accumulate)
            assert more > accumulate, (batch_size, accumulate)
            if batch_size % 2 == 0:
                assert smaller * more == batch_size * accumulate, (batch_size, accumulate)


def test_batch_of_one_suggests_image_size_or_backbone_not_batch_zero(monkeypatch):
    _cuda_with_total(monkeypatch, 8 * 2**30)
    text = out_of_memory_message(torch.device("cuda:0"), 1, 4, 512, "training")
    assert "--batch-size 0" not in text and "--batch-size" not in text
    assert "--image-size" in text and "--backbone" in text
    assert "at batch size 1 (512 px)" in text


def test_message_survives_a_failing_device_query(monkeypatch):
    def broken(device=None):
        raise RuntimeError("CUDA driver error")

    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    text = out_of_memory_message(torch.device("cuda:0"), 32, 1, 224, "training")
    assert text.startswith("CUDA ran out of memory on cuda:0 during training")
    assert "GiB" not in text


def test_mps_message_names_mps():
    text = out_of_memory_message(torch.device("mps"), 16, 1, 224, "training")
    assert text.startswith("MPS ran out of memory on mps during training at batch size 16 (224 px)")
    assert "--batch-size 8 --accumulate 2" in text
