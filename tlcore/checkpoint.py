"""Checkpoints: weights in safetensors with everything needed to rebuild the model in its metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlcore.errors import WeightsError
from tlcore.files import atomic_save_tensors
from tlcore.weights import read_weights_file

FORMAT = "tlcore-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    """The metadata a checkpoint carries (the safetensors header's ``tlcore`` entry)."""

    backbone: str
    classes: list[str]
    head: str
    head_options: dict
    preprocessing: dict
    image_size: int
    epoch: int
    metrics: dict
    weights: str  # where the backbone's starting weights came from
    # the data it was trained on: dataset, data_dir, seed, val_fraction (so eval can rebuild the same split)
    data: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata is str to str: the whole record is one JSON string."""
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}
        return {"tlcore": json.dumps(record), "format": "pt"}


# The types read_checkpoint insists on, so a damaged file fails here and not halfway through a rebuild.
FIELD_TYPES = {
    "backbone": str,
    "classes": list,
    "head": str,
    "head_options": dict,
    "preprocessing": dict,
    "image_size": int,
    "epoch": int,
    "metrics": dict,
    "weights": str,
    "data": dict,
}


def save_checkpoint(path: Path, model: torch.nn.Module, info: CheckpointInfo) -> None:
    """Write the model's state dict and its info atomically."""
    # clone().contiguous(): safetensors needs contiguous, unshared tensors (channels_last, tied weights)
    tensors = {key: value.detach().to("cpu").clone().contiguous() for key, value in model.state_dict().items()}
    atomic_save_tensors(Path(path), tensors, info.to_metadata())


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Tensors and info of a tlcore checkpoint; a clear error for any other file."""
    weights = read_weights_file(Path(path))
    meta = weights.tlcore_meta
    if not meta or meta.get("format") != FORMAT:
        raise WeightsError(f"{weights.path} is not a tlcore checkpoint (no tlcore metadata); pass a file a run wrote")
    if not isinstance(meta.get("format_version", 0), int):
        raise WeightsError(f"{weights.path} is a damaged tlcore checkpoint: format_version is not an integer")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(f"{weights.path} was written by a newer tlcore (format {meta['format_version']}); upgrade")
    fields = {k: meta[k] for k in CheckpointInfo.__dataclass_fields__ if k in meta}
    missing = set(CheckpointInfo.__dataclass_fields__) - set(fields) - {"data"}
    if missing:
        raise WeightsError(f"{weights.path} is a damaged tlcore checkpoint: metadata lacks {', '.join(sorted(missing))}")
    for name, kind in FIELD_TYPES.items():
        if name in fields and not isinstance(fields[name], kind):
            raise WeightsError(f"{weights.path} is a damaged tlcore checkpoint: {name} is not a {kind.__name__}")
    return weights.tensors, CheckpointInfo(**fields)
