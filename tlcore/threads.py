"""The thread budget of a CPU run: compute threads and DataLoader workers share the cores.

On the CPU every DataLoader worker is a process that decodes images on a core
the compute threads would otherwise use. torch's default (one compute thread
per core) plus the old default of up to 8 workers oversubscribes a small
machine: on 2 cores the same run trained at 209 images/s with 0 workers and 180
with 2. So a CPU run splits the cores it may use (the affinity mask and the
cgroup CPU quota, not the host's count) between the two, from a simple model of
one training image's cost:

- decoding, in core-milliseconds: ``DECODE_MS_FIXED`` plus
  ``DECODE_MS_PER_MEGAPIXEL`` times the source image's megapixels, read from the
  headers of a few files (in-memory data costs nothing: it is never decoded);
- compute (forward and backward), in core-milliseconds:
  ``COMPUTE_MS_AT_64`` at 64 px, growing with the square of the training size.

With ``w`` workers and ``c - w`` threads an image takes about
``max(decode / w, compute / (c - w))``; with no worker the main process decodes
too, ``decode + compute / c``. The default is the ``w`` that minimises this
(ties go to fewer workers), and torch gets the cores that remain (at least 1).
Small images and in-memory data get no worker; large JPEGs on many cores get
several. The choice depends only on the data, the image size and the cores, never
on timing, so the same command on the same machine picks the same thread count,
and CPU runs stay bit-identical for a seed. On CUDA nothing changes: workers as
:func:`tlcore.data.default_workers` chooses them, torch's threads untouched.

``--threads N`` and ``--workers N`` override either half; the other half gets
what remains. ``OMP_NUM_THREADS`` in the environment counts as asking for that
many threads. Inside someone else's process (``tlcore.fit`` called from a
script or a notebook) the thread count the process already has is kept, as if
asked for: a library does not change a process-wide setting unasked; the
``tlcore`` command, which owns its process, chooses (:func:`own_process`).

The constants were measured on a 2-core AVX-512 machine (PIL with
libjpeg-turbo: 8-10 ms per megapixel for decode and resize; ResNet-18 and
EfficientNet-Lite0 train at 8-12 core-ms per image at 64 px).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

DECODE_MS_FIXED = 0.3  # per file: open, header, crop bookkeeping, tensor conversion
DECODE_MS_PER_MEGAPIXEL = 12.0  # JPEG decode plus the antialiased crop-resize, one core
COMPUTE_MS_AT_64 = 10.0  # one image's forward and backward at 64 px, in core-milliseconds
SAMPLE_FILES = 8  # headers read to estimate the source images' size
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
_owned = {"process": False}  # set by the tlcore command: this process is tlcore's, its thread count ours to set


def own_process() -> None:
    """Declare the process tlcore's own (the ``tlcore`` command): CPU runs then choose torch's thread count."""
    _owned["process"] = True


def requested_threads(threads: int | None) -> tuple[int | None, str]:
    """The thread count a run must keep, and where it comes from; ``(None, "")`` when the budget may choose.

    ``threads`` is ``--threads`` (wins); then ``OMP_NUM_THREADS`` when it holds
    a positive integer; then, outside the tlcore command, the count the process
    already has.
    """
    if threads is not None:
        return threads, "--threads"
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value), "OMP_NUM_THREADS"
    if not _owned["process"]:
        import torch

        return torch.get_num_threads(), "this process's torch threads"
    return None, ""


@dataclass(frozen=True)
class ThreadBudget:
    """How a run uses the cores: ``threads`` compute threads (None: torch's own), ``workers`` DataLoader processes.

    ``cores`` is what this process may use; ``reason`` says in a few words how
    the split was made (for the banner and config.json).
    """

    threads: int | None
    workers: int
    cores: int
    reason: str
    advice: str = ""  # said when other processes already keep the cores busy (see busy_advice)

    def describe(self) -> dict:
        """What config.json records under ``resolved``: threads, workers, cores, why, and any advice given."""
        return {"threads": self.threads, "workers": self.workers, "cores": self.cores, "thread_budget": self.reason,
                "thread_advice": self.advice or None}

    def banner(self) -> str:
        """One phrase for the run's first line, e.g. ``2 threads + 0 workers of 2 cores (in-memory data)``."""
        threads = "torch's default threads" if self.threads is None else f"{self.threads} thread{'s' * (self.threads != 1)}"
        said = f"{threads} + {self.workers} worker{'s' * (self.workers != 1)} of {self.cores} cores ({self.reason})"
        return f"{said}; {self.advice}" if self.advice else said


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, lowered by a cgroup v2 CPU quota when one is set.

    A container limited to 2 CPUs on a 64-core host reports 64 in
    ``os.cpu_count()``; 64 threads there would take turns on 2 cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or a format this does not know: the mask alone
        pass
    return max(1, cores)


def busy_advice(threads: int, workers: int, cores: int, load: float | None = None) -> str:
    """Advice when the 1-minute load average says other processes hold cores this run means to use, else "".

    The choice itself never follows the load (the same command must pick the
    same threads), but on a loaded machine threads that wait for a preempted
    sibling make every step slower: with one busy process on 2 cores, 2 threads
    trained a ResNet-18 at 64 img/s and 1 thread at 100 (benchmarks/loaded.py).
    ``load`` defaults to ``os.getloadavg()[0]``.
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not on this platform
            return ""
    others = math.floor(load + 0.25)  # rounded, leaning towards busy: a core at 75% is taken
    fitting = max(1, cores - workers - others)
    if others < 1 or threads <= fitting:
        return ""
    return f"the machine is busy (load {load:.1f} on {cores} cores): --threads {fitting} may train faster"


def _image_pixels(item) -> int | None:
    """Pixels of an image as a dataset returns it (PIL image, (C, H, W) tensor, (H, W, C) array); None otherwise."""
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL: (width, height)
        return int(size[0]) * int(size[1])
    shape = getattr(item, "shape", None)
    if shape is not None and len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return int(shape[0]) * int(shape[1])  # (H, W, C): a NumPy image
    if shape is not None and len(shape) >= 2:
        return int(shape[-1]) * int(shape[-2])  # (C, H, W) or (H, W)
    return None


def _header_pixels(path: str) -> int | None:
    """Width x height from an image file's header (PIL reads no pixel data for this); None if it cannot."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except Exception:  # an unreadable file is the data path's to report, not the budget's
        return None


def source_megapixels(dataset) -> float | None:
    """The median size in megapixels of the images a file dataset decodes; 0.0 for in-memory data.

    Reads the headers of up to ``SAMPLE_FILES`` files spread over a dataset
    that lists ``samples`` as (path, label) pairs (tlcore's and torchvision's
    ImageFolder), through a ``Subset`` too; any other dataset has its first two
    items read. None when nothing could be measured.
    """
    from tlcore.dataset import TensorImageDataset

    if isinstance(dataset, TensorImageDataset):
        return 0.0
    indices = None
    base = dataset
    while hasattr(base, "dataset") and hasattr(base, "indices"):  # torch Subset, possibly nested
        indices = [base.indices[i] for i in indices] if indices is not None else list(base.indices)
        base = base.dataset
    if isinstance(base, TensorImageDataset):
        return 0.0
    count = len(indices) if indices is not None else len(dataset)
    if count == 0:
        return None
    picks = sorted({round(i * (count - 1) / max(1, SAMPLE_FILES - 1)) for i in range(min(SAMPLE_FILES, count))})
    pixels: list[int] = []
    samples = getattr(base, "samples", None)
    if isinstance(samples, (list, tuple)) and samples and isinstance(samples[0], (list, tuple)):
        for pick in picks:
            index = indices[pick] if indices is not None else pick
            found = _header_pixels(str(samples[index][0]))
            if found is not None:
                pixels.append(found)
    else:
        for pick in picks[:2]:
            try:
                item = dataset[pick]
            except Exception:  # the data path reports unreadable items; the budget only guesses
                continue
            found = _image_pixels(item[0] if isinstance(item, (tuple, list)) else item)
            if found is not None:
                pixels.append(found)
    if not pixels:
        return None
    pixels.sort()
    return pixels[len(pixels) // 2] / 1e6


def decode_ms(megapixels: float) -> float:
    """Core-milliseconds to decode and crop one image of this many megapixels (0 for in-memory data)."""
    return 0.0 if megapixels <= 0 else DECODE_MS_FIXED + DECODE_MS_PER_MEGAPIXEL * megapixels


def compute_ms(image_size: int) -> float:
    """Core-milliseconds of one image's forward and backward pass at ``image_size`` px (a mid-sized CNN)."""
    return COMPUTE_MS_AT_64 * (max(1, image_size) / 64.0) ** 2


def step_ms(workers: int, threads: int, decode: float, compute: float) -> float:
    """Model of one image's wall time: workers decode in parallel with compute; without them, in series."""
    if workers == 0:
        return decode + compute / threads
    return max(decode / workers, compute / threads)


def best_workers(cores: int, decode: float, compute: float, threads: int | None = None) -> int:
    """Workers (0 to cores - 1, or to the cores ``threads`` leave) minimising :func:`step_ms`; ties: fewer."""
    if decode <= 0:
        return 0
    if threads is not None:  # the compute threads are fixed: workers get the cores left, if any
        spare = max(0, cores - threads)
        return min(range(spare + 1), key=lambda w: (step_ms(w, threads, decode, compute), w))
    return min(range(cores), key=lambda w: (step_ms(w, cores - w, decode, compute), w))


def plan_budget(
    dataset,
    image_size: int,
    device_type: str = "cpu",
    threads: int | None = None,
    workers: int | None = None,
    cores: int | None = None,
    threads_from: str = "--threads",
) -> ThreadBudget:
    """Choose compute threads and DataLoader workers for a run on ``device_type`` (pure: sets nothing).

    ``dataset`` is the training split (a :class:`~tlcore.dataset.TensorImageDataset`
    or a dataset of files), ``image_size`` the training size in pixels,
    ``threads``/``workers`` what the user asked for (None: choose), ``cores``
    the cores to share (None: :func:`available_cores`), ``threads_from`` where
    a given ``threads`` came from (for the reason). Off the CPU, workers
    come from :func:`tlcore.data.default_workers` and threads stay torch's
    unless ``threads`` is given.
    """
    cores = cores or available_cores()
    if device_type != "cpu":
        from tlcore.data import default_workers

        chosen = default_workers(dataset, workers)
        reason = f"threads from {threads_from}" if threads is not None else "torch's default threads on an accelerator"
        return ThreadBudget(threads, chosen, cores, reason)
    if threads is not None and workers is not None:
        return ThreadBudget(threads, workers, cores, f"threads from {threads_from}, workers from --workers")
    megapixels = source_megapixels(dataset)
    if megapixels == 0.0:
        source = "in-memory data"
    elif megapixels is None:
        source = "image size unknown"
        megapixels = 0.25  # a typical photo dataset after the camera's size is reduced; a middle guess
    else:
        source = f"~{megapixels:.2f} MP files"
    decode, compute = decode_ms(megapixels), compute_ms(image_size)
    if workers is not None:
        threads = max(1, cores - workers)
        return ThreadBudget(threads, workers, cores, f"workers from --workers, threads the rest; {source}",
                            busy_advice(threads, workers, cores))
    chosen = best_workers(cores, decode, compute, threads)
    if threads is not None:
        return ThreadBudget(threads, chosen, cores, f"threads from {threads_from}, workers the rest; {source}")
    threads = max(1, cores - chosen)
    return ThreadBudget(threads, chosen, cores, f"{source} at {image_size} px", busy_advice(threads, chosen, cores))


def apply_budget(budget: ThreadBudget) -> None:
    """Give torch the budget's compute threads (nothing when it leaves them to torch)."""
    if budget.threads is not None:
        import torch

        torch.set_num_threads(budget.threads)
