"""What a run knows while it trains: the object callbacks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlcore.backbone import Backbone
from tlcore.checkpoint import CheckpointInfo
from tlcore.config import RunConfig
from tlcore.distributed import Distributed
from tlcore.model import Classifier


@dataclass
class RunState:
    """The live state of one run. Callbacks read it, and may set ``should_stop``."""

    config: RunConfig
    output_dir: Path
    model: Classifier
    backbone: Backbone
    classes: list[str]
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any
    image_size: int
    steps_per_epoch: int
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps since the run started
    epoch_step: int = 0  # steps into the current epoch
    epoch_images: int = 0  # training images seen this epoch
    train_loss_sum: torch.Tensor | None = None  # on the device: read it rarely, it synchronises
    history: list[dict] = field(default_factory=list)
    should_stop: bool = False
    stop_reason: str = ""
    unreadable: list[str] = field(default_factory=list)  # why each skipped image could not be read, first seen first
    nonfinite_batches: int = 0  # batches skipped for a NaN or infinite loss (--skip-nonfinite)
    place: Distributed = field(default_factory=Distributed)  # rank and world size in a torch.distributed run
    pipeline: str = "loader"  # where batches come from: "memory" (held on the device) or "loader" (DataLoader)

    def checkpoint_info(self, metrics: dict) -> CheckpointInfo:
        """What a checkpoint of the model at this point must carry to rebuild it alone."""
        return CheckpointInfo(
            backbone=self.config.backbone,
            classes=list(self.classes),
            head=self.config.head,
            head_options={"hidden": self.config.head_hidden, "dropout": self.config.head_dropout},
            preprocessing=self.backbone.preprocessing.to_dict(),
            image_size=self.image_size,
            epoch=self.epoch + 1,
            metrics=dict(metrics),
            weights=self.backbone.weights,
            data=self.data_identity(),
        )

    def data_identity(self) -> dict:
        """What determines the images and the split: dataset, data_dir, seed, val_fraction."""
        return {
            "dataset": self.config.dataset,
            "data_dir": self.config.data_dir,
            "seed": self.config.seed,
            "val_fraction": self.config.val_fraction,
        }

    def running_loss(self) -> float | None:
        """Mean training loss so far this epoch (synchronises with the device)."""
        if self.train_loss_sum is None or self.epoch_images == 0:
            return None
        return float(self.train_loss_sum) / self.epoch_images
