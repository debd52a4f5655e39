"""The run folder: created fresh, never over an earlier run."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

from tlcore.config import RunConfig
from tlcore.errors import ConfigError


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
