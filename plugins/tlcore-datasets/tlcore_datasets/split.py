"""Seeded train/validation splits shared by the datasets that make their own: stratified by class, or multi-label."""

from __future__ import annotations

import math

import numpy as np

from tlcore import ConfigError


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into ``(train, val)``, holding out ``val_fraction`` of every class.

    Each class keeps ``round(count * val_fraction)`` images for validation, at
    least one where the class has two or more and never all of them, so every
    class stays in training. The result depends only on the labels, the
    fraction and the seed (numpy's PCG64 stream), and both index arrays come
    back sorted.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(int(seed) % 2**63)  # negative seeds are allowed, numpy wants >= 0
    train_parts, val_parts = [], []
    for label in np.unique(labels):  # sorted, so the stream is consumed in the same order every time
        members = rng.permutation(np.flatnonzero(labels == label))
        count = len(members)
        n_val = math.floor(count * val_fraction + 0.5)
        if count >= 2:
            n_val = min(max(n_val, 1), count - 1)
        else:
            n_val = 0
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    empty = np.zeros(0, dtype=np.int64)
    train = np.sort(np.concatenate(train_parts)) if train_parts else empty
    val = np.sort(np.concatenate(val_parts)) if val_parts else empty
    return train.astype(np.int64), val.astype(np.int64)


