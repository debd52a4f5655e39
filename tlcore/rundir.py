"""The run folder: created fresh, never over an earlier run, and used by one process at a time."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; see lock_run_folder
    fcntl = None  # type: ignore[assignment]

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
    """Make the run folder and lock it (:func:`lock_run_folder`); refuse one that already holds files.

    So no earlier run is overwritten, and a second run given the same
    --output while the first is still starting fails at once naming its pid.
    """
    path = Path(config.output).expanduser() if config.output else default_output(config)
    if path.is_dir():
        holder = _lock_holder(path)
        if holder is not None:
            raise ConfigError(f"output folder {path} is in use by {holder} (another tlcore run); choose another --output")
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
    lock_run_folder(path)
    return path


# Run folders this process holds: resolved path -> descriptor of the folder, flock'ed exclusively.
_HELD: dict[Path, int] = {}


def lock_run_folder(folder: Path) -> Path:
    """Take the run folder for this process, atomically, or fail at once naming the process that has it.

    The lock is ``flock`` on the folder itself (no file is added to it): the
    kernel drops it when the holder exits, however it ends, so a killed run
    never leaves a stale lock. Taking it again in the same process is a no-op
    (a run and its resume in one script). Returns ``folder``. ConfigError
    "run folder ... is in use by process PID" when another process holds it.
    Where the platform has no ``flock`` (Windows) folders are not locked.
    """
    key = Path(folder).resolve()
    if fcntl is None or key in _HELD:
        return folder
    try:
        descriptor = os.open(key, os.O_RDONLY)
    except OSError:  # not a folder (yet): whoever reads it next says so
        return folder
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        holder = _lock_holder(key) or "another process"
        raise ConfigError(
            f"run folder {folder} is in use by {holder} (a tlcore run or --resume); wait for it to end or stop it, "
            "then try again"
        ) from None
    except OSError:  # a file system without flock (some network mounts): run unlocked rather than not at all
        os.close(descriptor)
        return folder
    _HELD[key] = descriptor
    return folder


def release_run_folder(folder: Path | None = None) -> None:
    """Give up this process's lock on ``folder``, or on every folder it holds (None); the process's exit does it too.

    A no-op for a folder it does not hold. Called when a run ends, however it ends.
    """
    keys = list(_HELD) if folder is None else [Path(folder).resolve()]
    for key in keys:
        descriptor = _HELD.pop(key, None)
        if descriptor is not None:
            os.close(descriptor)  # closing the only descriptor of the flock releases it


def _lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock when another process does ("process 1234", pid from /proc/locks), else None."""
    if fcntl is None or Path(folder).resolve() in _HELD:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)  # succeeds unless someone holds it exclusively
        return None
    except OSError:
        pass
    finally:
        os.close(descriptor)  # also drops the shared lock just taken
    info = os.stat(folder)
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"  # as /proc/locks writes it
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[4].isdigit():
            if fields[5] == where:
                return f"process {fields[4]}"
    return "another process"


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
    *,
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
    lr_find: dict | None = None,
    head_classes: dict | None = None,
) -> None:
    """config.json: the configuration as given, what it resolved to, and the versions that ran it.

    ``lr_find``: the range test's summary under --lr auto: the configuration then says ``lr: "auto"``
    and ``resolved`` holds the rate used (``lr``) and the test (``lr_find``).
    """
    auto_lr = {"lr": config.lr, "lr_find": lr_find} if lr_find is not None else {}
    atomic_write_json(
        output_dir / "config.json",
        {
            "config": {**config.to_dict(), **({"lr": "auto"} if lr_find is not None else {})},
            "resolved": {
                **auto_lr,
                "device": str(device),
                "image_size": image_size,
                "weights": backbone.weights,
                "head_from_checkpoint": head_reused,
                # --weights EARLIER_RUN: the classes whose head rows were kept, the new ones, those removed or renamed
                "head_classes": head_classes,
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
