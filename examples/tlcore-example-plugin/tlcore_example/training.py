"""The example's freeze policy and callback."""

from __future__ import annotations

import json
import time
from typing import Any

from tlcore import Callback, FreezePolicy

SUMMARY_FILE = "example-summary.json"


class TopHalf(FreezePolicy):
    """The upper half of the layer groups trains (rounded up), with the head; the lower half stays frozen."""

    def trainable_groups(self, groups: list[str], epoch: int) -> list[str]:
        """The last ceil(len(groups) / 2) groups, every epoch."""
        return list(groups[len(groups) // 2 :])


class Summary(Callback):
    """Writes example-summary.json in the run folder when the run ends: best epoch, its val_acc, epochs, seconds."""

    name = "example:summary"

    def __init__(self) -> None:
        self.started = 0.0

    def on_fit_start(self, run) -> None:
        """Start the clock."""
        self.started = time.perf_counter()

    def on_fit_end(self, run) -> None:
        """Write the summary (run.history holds every epoch's metrics, a resumed run's earlier ones too)."""
        best: dict[str, Any] = max(run.history, key=lambda m: m["val_acc"], default={})
        summary = {
            "backbone": run.config.backbone,
            "dataset": run.config.dataset,
            "epochs": len(run.history),
            "best_epoch": best.get("epoch"),
            "best_val_acc": best.get("val_acc"),
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        (run.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
