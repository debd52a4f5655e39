"""Measure fine-tuning choices on the embedded digits data and print a Markdown table.

Each row is one `tlcore.train.fit` in this process, same seed and data:
    python benchmarks/digits_table.py zoo        # pretrained vs random Lite0, head-only vs full (docs/model-zoo.md)
    python benchmarks/digits_table.py policies   # every freeze policy on pretrained Lite0 (docs/finetuning.md)
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time

import torch

from tlcore.config import build_config
from tlcore.plugins import get_host
from tlcore.train import fit

COMMON = dict(backbone="timm:tf_efficientnet_lite0", dataset="digits", epochs=3, callbacks=["metrics", "checkpoint"])

SUITES = {
    "zoo": [
        ("pretrained, full fine-tuning", dict(weights="pretrained", freeze="none")),
        ("random init, full fine-tuning", dict(weights="none", freeze="none")),
        ("pretrained, head only (cached features)", dict(weights="pretrained", freeze="backbone", cache_features=True,
                                                         lr=0.01)),
        ("random init, head only (cached features)", dict(weights="none", freeze="backbone", cache_features=True,
                                                          lr=0.01)),
    ],
    "policies": [
        ("none (full fine-tuning)", dict(freeze="none")),
        ("backbone (head only)", dict(freeze="backbone", lr=0.01)),
        ("backbone + --cache-features", dict(freeze="backbone", lr=0.01, cache_features=True)),
        ("partial --freeze-to stage3", dict(freeze="partial", freeze_to="stage3")),
        ("gradual --unfreeze-start 1", dict(freeze="gradual", unfreeze_start=1)),
        ("norm (norm layers + head)", dict(freeze="norm", lr=0.01)),
        ("none + --layer-decay 0.7", dict(freeze="none", layer_decay=0.7)),
    ],
}


def main(suite: str) -> None:
    """Run one suite and print its table."""
    host = get_host()
    print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, python {platform.python_version()}")
    print("| configuration | best val_acc | val_acc after 3 epochs | wall time (s) |")
    print("|---|---|---|---|")
    for label, options in SUITES[suite]:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = fit(build_config(overrides={**COMMON, **options, "output": f"{folder}/run"}), host)
            seconds = time.perf_counter() - started
        print(f"| {label} | {result.best['val_acc']:.4f} | {result.history[-1]['val_acc']:.4f} | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "zoo")
