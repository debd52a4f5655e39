"""A TensorBoard log of each run (per-epoch scalars), on by default when ``tensorboard`` is installed."""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING, Any

from tlcore import Callback, ConfigError

if TYPE_CHECKING:  # only for annotations: tlcore.state imports torch, which loading the plugin must not
    from tlcore import RunState

LOG_FOLDER = "tensorboard"  # inside the run folder: `tensorboard --logdir runs` shows every run
SCALARS = (
    "train_loss", "val_loss", "train_acc", "val_acc", "lr", "images_per_second",
    "val_map", "val_f1_micro", "val_f1_macro",  # multilabel runs
)


def available() -> bool:
    """Whether torch.utils.tensorboard can work here (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


def summary_writer_class():
    """torch's SummaryWriter (imported late: it pulls in tensorboard)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


class TensorBoard(Callback):
    """Writes the epoch metrics as scalars (step = epoch) and the configuration as text."""

    name = "tensorboard"

    def __init__(self):
        self.writer = None

    def on_fit_start(self, run: RunState) -> None:
        """Open the writer in <run folder>/tensorboard."""
        self.writer = summary_writer_class()(log_dir=str(run.output_dir / LOG_FOLDER))
        self.writer.add_text("config", "```\n" + json.dumps(run.config.to_dict(), indent=2) + "\n```", 0)

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """One point per metric per epoch; flushed so a live TensorBoard sees it at once."""
        for key in SCALARS:
            if isinstance(metrics.get(key), (int, float)):
                section = "loss" if key.endswith("loss") else "accuracy" if key.endswith("acc") else "train"
                if key.startswith(("val_map", "val_f1")):
                    section = "multilabel"
                self.writer.add_scalar(f"{section}/{key}", metrics[key], metrics["epoch"])
        self.writer.flush()

    def on_fit_end(self, run: RunState) -> None:
        """Close the log."""
        if self.writer is not None:
            self.writer.close()


def make_tensorboard(config) -> TensorBoard:
    """Factory: the callback, or a clear error when it was asked for without tensorboard installed."""
    if not available():
        raise ConfigError("the tensorboard callback needs the tensorboard package; install it with: pip install tensorboard")
    return TensorBoard()
