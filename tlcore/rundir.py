"""The run folder: created fresh, never over an earlier run."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

from tlcore.config import RunConfig
from tlcore.errors import ConfigError
from tlcore.files import atomic_write_json


def default_output(config: RunConfig) -> Path:
    """runs/<dataset>-<backbone>-<time>, with a numeric suffix if that exists already."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{config.dataset}-{config.backbone}")
    base = Path("runs") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, suffix = base, 2
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return path


def create_output_dir(config: RunConfig) -> Path:
    """Make the run folder; refuse one that already holds files, so no earlier run is overwritten."""
    path = Path(config.output).expanduser() if config.output else default_output(config)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"output folder {path} already exists and is not empty; choose another --output (nothing was changed)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tlcore-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output folder {path} cannot be written: {error.strerror or error}") from error
    return path


def versions() -> dict[str, str]:
    """Library versions worth recording next to a run."""
    import torch
    import torchvision

    import tlcore

    return {
        "tlcore": tlcore.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def write_run_config(
    output_dir: Path,
    config: RunConfig,
    host,
    device,
    backbone,
    data,
    image_size: int,
    phases,
    class_weights,
    head_reused: bool,
    callback_names: list[str],
    amp_dtype,
    data_path: dict | None = None,
) -> None:
    """config.json: the configuration as given, what it resolved to, and the versions that ran it."""
    atomic_write_json(
        output_dir / "config.json",
        {
            "config": config.to_dict(),
            "resolved": {
                "device": str(device),
                "image_size": image_size,
                "weights": backbone.weights,
                "head_from_checkpoint": head_reused,
                "preprocessing": backbone.preprocessing.to_dict(),
                "feature_dim": backbone.feature_dim,
                "layer_groups": [group.name for group in backbone.layer_groups],
                "phases": [phase.__dict__ for phase in phases],
                "classes": data.classes,
                "train_images": len(data.train),
                "val_images": len(data.val),
                "class_weights": class_weights.tolist() if class_weights is not None else None,
                "callbacks": callback_names,
                "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                **(data_path or {}),
            },
            "versions": versions(),
            "plugins": host.plugin_versions(),
        },
    )
