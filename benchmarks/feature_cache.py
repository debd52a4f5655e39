"""The frozen-backbone fast path against the slow path: ResNet-18, digits at 64 px, 8 epochs, one process.

    python benchmarks/feature_cache.py [--repeats N]

Runs slow and cached alternately, prints each wall time, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from tlcore.config import build_config
from tlcore.plugins import get_host
from tlcore.train import fit

SETTINGS = dict(backbone="torchvision:resnet18", weights="none", dataset="digits", image_size=64, epochs=8,
                freeze="backbone", augment="none", callbacks=["metrics", "checkpoint"])


def timed(host, **extra) -> tuple[float, float]:
    """Wall time and final val_acc of one run."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = fit(build_config(overrides={**SETTINGS, **extra, "output": f"{folder}/run"}), host)
        return time.perf_counter() - started, result.history[-1]["val_acc"]


def main() -> None:
    """Alternate the two paths and report the ratio of medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    host = get_host()
    slow, fast = [], []
    for _ in range(repeats):
        seconds, slow_acc = timed(host)
        slow.append(seconds)
        seconds, fast_acc = timed(host, cache_features=True)
        fast.append(seconds)
        print(f"slow {slow[-1]:.1f}s (val_acc {slow_acc:.4f})  cached {fast[-1]:.1f}s (val_acc {fast_acc:.4f})", flush=True)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads")
    print(f"median slow {statistics.median(slow):.1f}s, cached {statistics.median(fast):.1f}s, "
          f"speed-up {statistics.median(slow) / statistics.median(fast):.1f}x")


if __name__ == "__main__":
    main()
