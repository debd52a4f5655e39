"""The frozen-backbone fast path: pooled features computed once, then only the head trains.

With every layer group frozen for the whole run (and norm statistics frozen),
the backbone is a fixed function, so its features for each image can be
computed once in inference mode, without augmentation, and reused every epoch.
The cache lives in memory, or in a file in the run folder when it would not
fit; it belongs to one run and carries the fingerprint of everything that
determines it (backbone, weights, image size, preprocessing, data), which is
checked where the run cuts its batches from it (``tlcore.train``) and names
its spill file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tlcore.errors import DataError

MEMORY_SHARE = 0.5  # the cache may take up to this share of the memory available when it is built


def available_memory_bytes() -> int:
    """Memory the system can still give (MemAvailable on Linux), else a conservative 2 GiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def fingerprint(facts: dict) -> str:
    """A digest of everything the features depend on."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CachedFeatures(Dataset):
    """Features (N, D) float32 and labels (N,) for one split, in memory or memory-mapped from a file."""

    features: torch.Tensor
    labels: torch.Tensor
    key: str
    spilled_to: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[index], self.labels[index]

    def check(self, key: str) -> None:
        """Refuse to serve features computed for anything else: RuntimeError unless ``key`` is this cache's fingerprint."""
        if key != self.key:
            raise RuntimeError("feature cache fingerprint mismatch: the cache belongs to another backbone or data")


@torch.inference_mode()
def compute_features(
    backbone: nn.Module,
    batches: Iterable,
    count: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    key: str,
    spill_dir: Path,
    name: str,
) -> CachedFeatures:
    """Run the frozen backbone once over ``count`` images in dataset order (eval mode), keeping the features.

    ``batches`` yields ``(images, labels, unreadable)`` with images ready on the device
    (:mod:`tlcore.batches`). The features stay in memory, or go to a file when they would not fit.
    """
    was_training = backbone.training
    backbone.eval()
    features: torch.Tensor | np.ndarray | None = None
    labels: torch.Tensor | None = None  # int64 [N], or float32 [N, C] multi-hot: known from the first batch
    spilled_to = None
    start = 0
    for images, batch_labels, unreadable in batches:
        if unreadable:  # a cache must cover every image: no silent gaps
            raise DataError(f"{unreadable[0]}; --cache-features needs every image readable: remove or fix it")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            batch = backbone(images).float().cpu()
        if features is None:  # the width is known after the first batch
            needed = count * batch.shape[1] * 4
            if needed <= MEMORY_SHARE * available_memory_bytes():
                features = torch.empty(count, batch.shape[1])
            else:
                spill_dir.mkdir(parents=True, exist_ok=True)
                spilled_to = spill_dir / f"{name}-{key[:16]}.npy"
                features = np.lib.format.open_memmap(spilled_to, mode="w+", dtype=np.float32, shape=(count, batch.shape[1]))
        if labels is None:
            labels = torch.empty((count, *batch_labels.shape[1:]), dtype=batch_labels.dtype)
        end = start + len(batch)
        features[start:end] = batch.numpy() if isinstance(features, np.ndarray) else batch
        labels[start:end] = batch_labels.cpu()
        start = end
    backbone.train(was_training)
    if isinstance(features, np.ndarray):
        features.flush()
        features = torch.from_numpy(np.load(spilled_to, mmap_mode="r+"))
    return CachedFeatures(features, labels if labels is not None else torch.empty(0, dtype=torch.int64), key, spilled_to)


def remove_spill_files(*caches: CachedFeatures) -> None:
    """Delete the files a run's caches spilled to (they are never reused)."""
    for cache in caches:
        if cache.spilled_to is not None:
            cache.features = torch.empty(0)
            try:
                os.unlink(cache.spilled_to)
            except FileNotFoundError:
                pass
