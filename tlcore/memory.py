"""Peak memory per epoch, and CUDA out-of-memory errors turned into one clear line.

``PeakMemory`` is reset at an epoch's start and read at its end:

- host: the peak resident set size (RSS) of this process. On Linux the
  kernel's high-water mark is reset by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux 4.0+) and read back as ``VmHWM`` from
  ``/proc/self/status``, so the figure is the epoch's own peak. Where that
  reset is refused (some containers, other systems) the figure falls back to
  ``getrusage``'s lifetime peak, and ``host_since_start`` says so.
- GPU (CUDA only): PyTorch's caching-allocator peaks, reset per epoch.

DataLoader worker processes are not counted (see ``PeakMemory``).
"""

from __future__ import annotations

import math
import os
import sys

import torch

try:  # absent on Windows; the host figure is then None
    import resource
except ImportError:  # pragma: no cover - not reachable on Linux or macOS
    resource = None

_MIB = 1024 * 1024
_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"
# After a successful reset VmHWM equals VmRSS; allow for what other threads allocate between the write and the read.
_RESET_SLACK_KIB = 32 * 1024


def _status_kib(*fields: str) -> dict[str, int] | None:
    """Named ``kB`` fields of /proc/self/status, or None where that file (or a field) is missing."""
    try:
        with open(_PROC_STATUS) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in fields:
            try:
                found[name] = int(rest.split()[0])
            except (IndexError, ValueError):
                return None
    return found if len(found) == len(fields) else None


def _lifetime_peak_bytes() -> int | None:
    """Peak RSS since the process started: ru_maxrss is KiB on Linux, bytes on macOS."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _mib(n_bytes: int | float) -> float:
    return round(n_bytes / _MIB, 1)


class PeakMemory:
    """Peak host and GPU memory of this process between ``reset()`` and ``read()``, in MiB.

    ``host_since_start`` is False when the last ``reset()`` cleared the kernel's
    RSS high-water mark, so ``peak_host_mb`` is the peak since that reset; it is
    True when the reset was refused (or ``reset()`` was never called), and then
    ``peak_host_mb`` is the peak since the process started, which can only grow
    from epoch to epoch.

    Worker processes are left out on purpose: RUSAGE_CHILDREN covers only
    children already reaped (persistent DataLoader workers are reaped when the
    run ends), reports the largest single child rather than their sum, and
    cannot be reset per epoch; reading each live worker's /proc status instead
    would count the pages they share copy-on-write with this process once per
    worker. Neither gives a figure worth printing.
    """

    def __init__(self, device: torch.device) -> None:
        """Measure for ``device``; GPU figures only when its type is ``cuda``."""
        self.device = torch.device(device)
        self.host_since_start = True
        # Only CUDA's allocator keeps a resettable peak; MPS exposes current usage only, so MPS reads None.
        self._cuda = self.device.type == "cuda"

    def reset(self) -> None:
        """Start a new measuring window (call at an epoch's start)."""
        self.host_since_start = not self._clear_host_peak()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | None]:
        """Peaks since ``reset()``: ``peak_host_mb``, ``peak_gpu_mb`` and ``peak_gpu_reserved_mb``.

        MiB rounded to 0.1. The GPU figures are None off CUDA; ``peak_gpu_mb`` is
        what tensors took, ``peak_gpu_reserved_mb`` what the caching allocator held
        from the driver (closer to what nvidia-smi shows). ``peak_host_mb`` is None
        only where the system reports no RSS at all (Windows).
        """
        host = self._host_peak_bytes()
        figures: dict[str, float | None] = {
            "peak_host_mb": None if host is None else _mib(host),
            "peak_gpu_mb": None,
            "peak_gpu_reserved_mb": None,
        }
        if self._cuda:
            figures["peak_gpu_mb"] = _mib(torch.cuda.max_memory_allocated(self.device))
            figures["peak_gpu_reserved_mb"] = _mib(torch.cuda.max_memory_reserved(self.device))
        return figures

    def _clear_host_peak(self) -> bool:
        """Reset the kernel's RSS high-water mark; True only if it is verifiably reset."""
        before = _status_kib("VmHWM", "VmRSS")
        if before is None:
            return False
        try:
            fd = os.open(_PROC_CLEAR_REFS, os.O_WRONLY)
            try:
                os.write(fd, b"5")
            finally:
                os.close(fd)
        except OSError:  # PermissionError in locked-down containers, EINVAL before Linux 4.0, ENOENT elsewhere
            return False
        after = _status_kib("VmHWM", "VmRSS")
        if after is None:
            return False
        # A sandbox may accept the write and ignore it: trust the reset only if the mark fell or now sits at the RSS.
        return after["VmHWM"] < before["VmHWM"] or after["VmHWM"] - after["VmRSS"] <= _RESET_SLACK_KIB

    def _host_peak_bytes(self) -> int | None:
        if not self.host_since_start:
            status = _status_kib("VmHWM")
            if status is not None:
                return status["VmHWM"] * 1024
        return _lifetime_peak_bytes()


def _out_of_memory_types() -> tuple[type[BaseException], ...]:
    """The OOM exception classes this torch has: torch.OutOfMemoryError (2.5+), torch.cuda.OutOfMemoryError (older)."""
    found = []
    for owner in (torch, getattr(torch, "cuda", None)):
        cls = getattr(owner, "OutOfMemoryError", None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


_OOM_TYPES = _out_of_memory_types()
# Builds and backends that raise a plain RuntimeError say so in the message
# ("CUDA out of memory. Tried to allocate ...", "CUDA error: out of memory",
# "MPS backend out of memory", "XPU out of memory").
_OOM_PHRASE = "out of memory"


def is_out_of_memory(error: BaseException) -> bool:
    """True if ``error`` is an accelerator running out of memory (CUDA, MPS, ...), directly or as the ``__cause__``.

    Host ``MemoryError`` is not counted: the advice for it is not about the GPU batch.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    # Follow explicit chaining (`raise X from oom`), e.g. a hook that wrapped the error; guard against cycles.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _OOM_TYPES and isinstance(current, _OOM_TYPES):
            return True
        if isinstance(current, RuntimeError) and _OOM_PHRASE in str(current).lower():
            return True
        current = current.__cause__
    return False


def _smaller_batch(batch_size: int, accumulate: int) -> tuple[int, int]:
    """A batch at most half the size and the accumulation that keeps ``batch_size * accumulate``.

    Halving works when the batch is even; otherwise the largest divisor of the
    effective batch between a quarter and a half of the batch. Where there is
    none (a prime batch, say), halve and double, which loses a little of the
    effective batch; the message then says what it becomes.
    """
    effective = batch_size * accumulate
    for smaller in range(batch_size // 2, max(1, math.ceil(batch_size / 4)) - 1, -1):
        if effective % smaller == 0:
            return smaller, effective // smaller
    return batch_size // 2, accumulate * 2


def _device_name(device: torch.device) -> str:
    """``cuda:0`` rather than ``cuda`` where the index can be found, with the total memory on CUDA."""
    name = str(device)
    if device.type != "cuda":
        return name
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
    except Exception:  # the message must never raise while reporting another error
        return name
    return f"cuda:{index} ({total / 1024**3:.1f} GiB)"


def out_of_memory_message(device: torch.device, batch_size: int, accumulate: int, image_size: int, where: str) -> str:
    """One line for an out-of-memory error: what ran out, where, at what batch, and what to change.

    ``where`` is "training", "validation" or "feature caching". The suggestion
    halves ``--batch-size`` and raises ``--accumulate`` so that the effective
    batch (batch size x accumulate), and so training, stays the same; at batch
    size 1 it suggests a smaller ``--image-size`` or ``--backbone`` instead.
    """
    device = torch.device(device)
    accumulate = max(1, accumulate)
    kind = {"cuda": "CUDA", "mps": "MPS"}.get(device.type, device.type.upper())
    head = f"{kind} ran out of memory on {_device_name(device)} during {where} at batch size {batch_size} ({image_size} px)"
    if batch_size <= 1:
        return f"{head}: the batch cannot shrink further; use a smaller --image-size or a smaller --backbone"
    effective = batch_size * accumulate
    smaller, more = _smaller_batch(batch_size, accumulate)
    if smaller * more == effective:
        keeps = f"keeps the effective batch of {effective}"
    else:
        keeps = f"gives an effective batch of {smaller * more} (now {effective})"
    return f"{head}: use a smaller batch, e.g. --batch-size {smaller} --accumulate {more} {keeps}; or a smaller --image-size"
