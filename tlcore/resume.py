"""Exact resume: everything a run needs to continue as if it had never stopped, without pickle.

One file, train_state.safetensors, written atomically: tensors (model,
optimizer state, random generators, the epoch's running sums) plus a JSON
record in its metadata (epoch and step, schedule, gradient scaler, history,
callbacks' state, Python and NumPy generators, the configuration).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlcore.background import BackgroundWrite
from tlcore.errors import ConfigError, ResourceError
from tlcore.files import atomic_save_tensors, cpu_copy
from tlcore.messages import first_line, short_repr
from tlcore.weights import read_weights_file, strip_prefix

STATE_FILE = "train_state.safetensors"
FORMAT = "tlcore-train-state"
FORMAT_VERSION = 1
REQUIRED_RECORD = {
    "epoch",
    "epoch_step",
    "step",
    "epoch_images",
    "history",
    "config",
    "optimizer",
    "scheduler",
    "scaler",
    "callbacks",
    "rng",
}


@dataclass
class TrainState:
    """A saved position in a run."""

    tensors: dict[str, torch.Tensor]
    record: dict  # epoch, epoch_step, step, epoch_images, scheduler, scaler, history, callbacks, rng, config

    @property
    def config(self) -> dict:
        """The run's configuration."""
        return self.record["config"]


def save_train_state(
    path: Path,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    callbacks,
    record: dict,
    running: dict[str, torch.Tensor],
    writer: BackgroundWrite | None = None,
    ema=None,
) -> None:
    """Write the state atomically; ``record`` holds the position (epoch, epoch_step, step, ...).

    ``ema``: the weights' moving average (--ema), saved as ``ema.*`` tensors.
    Everything is copied now; with ``writer`` the serialising and writing happen on its thread.
    """
    tensors = {f"model.{k}": cpu_copy(v) for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": cpu_copy(v) for k, v in ema.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict] = {}
    for index, values in optimizer_state["state"].items():
        plain_state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = cpu_copy(value)
            else:
                plain_state[str(index)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device_index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{device_index}"] = state
    for name, value in running.items():
        tensors[f"running.{name}"] = value.detach().cpu().reshape(1).clone()
    numpy_state = np.random.get_state()
    full_record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **record,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": plain_state},
        "scheduler": _jsonable(scheduler.state_dict()),
        "scaler": scaler.state_dict(),
        "callbacks": {name: callback.state_dict() for name, callback in callbacks},
        "rng": {
            "python": _jsonable(random.getstate()),
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        },
    }
    metadata = {"tlcore_train_state": json.dumps(full_record)}

    def write() -> None:
        try:
            atomic_save_tensors(Path(path), tensors, metadata)
        except ResourceError as error:  # disk full: the last complete state stays, and the run can go on from it
            raise ResourceError(f"{error}; free space, then resume with: tlcore run --resume {Path(path).parent}") from error

    if writer is None:
        write()
    else:
        writer.submit(write)


def load_train_state(run_dir: Path) -> TrainState:
    """Read a run folder's saved state; a clear error when there is none or it is damaged."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no {STATE_FILE}: it is not a run folder, or the run saved no state yet")
    weights = read_weights_file(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    try:
        record = json.loads(meta.get("tlcore_train_state", "{}"))
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a tlcore training state")
    missing = sorted(REQUIRED_RECORD - set(record))
    if missing or not any(k.startswith("model.") for k in weights.tensors) or "rng.torch" not in weights.tensors:
        what = ", ".join(missing) or "model or generator tensors"
        raise ConfigError(f"{path} is a damaged training state (missing {what}); it cannot be resumed")
    try:
        validate_record(record)
    except _Damaged as damage:
        raise ConfigError(f"{path} is a damaged training state ({damage}); it cannot be resumed") from None
    return TrainState(weights.tensors, record)


class _Damaged(Exception):
    """A field of the training-state record that does not hold what the format says (becomes a ConfigError)."""


def _count(record: dict, key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**53:
        raise _Damaged(f"{key} must be a non-negative integer, got {short_repr(value)}")
    return value



def _kind(record: dict, key: str, kind: type) -> None:
    if not isinstance(record[key], kind):
        raise _Damaged(
            f"{key} must be a{'n' if kind is dict else ''} {'object' if kind is dict else kind.__name__}, "
            f"got {short_repr(record[key])}"
        )


def validate_record(record: dict) -> None:
    """Check a training-state record's fields before anything uses them; raises _Damaged naming the first bad one.

    epoch, epoch_step, step and epoch_images are non-negative integers; history
    holds one object per completed epoch (``epoch`` numbered from 1, a finite
    ``val_acc``); config, scheduler, scaler and callbacks are objects (callbacks'
    values too); the optimizer has a list of param_groups and a state object;
    the random generators' states have the shapes Python and NumPy write.
    """
    epoch = _count(record, "epoch")
    for key in ("epoch_step", "step", "epoch_images"):
        _count(record, key)
    for key in ("config", "scheduler", "scaler", "callbacks", "optimizer", "rng"):
        _kind(record, key, dict)
    _kind(record, "history", list)
    history = record["history"]
    if len(history) != epoch:
        raise _Damaged(f"history holds {len(history)} epochs but the state is at epoch {epoch}")
    for number, metrics in enumerate(history, start=1):
        if not isinstance(metrics, dict) or metrics.get("epoch") != number:
            raise _Damaged(f"history entry {number} must be an object with epoch {number}, got {short_repr(metrics)}")
        for key, value in metrics.items():
            if key in ("train_loss", "train_acc", "val_loss", "val_acc") and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise _Damaged(f"history entry {number}: {key} must be a number, got {short_repr(value)}")
        if not math.isfinite(metrics.get("val_acc", math.nan)):
            raise _Damaged(f"history entry {number} has no finite val_acc")
    if not all(isinstance(value, dict) for value in record["callbacks"].values()):
        raise _Damaged("callbacks must map each callback's name to an object")
    optimizer = record["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(optimizer.get("state"), dict):
        raise _Damaged("optimizer must hold a list of param_groups and a state object")
    rng = record["rng"]
    python, numpy_state = rng.get("python"), rng.get("numpy")
    if not (isinstance(python, list) and len(python) == 3 and isinstance(python[1], list)):
        raise _Damaged("rng.python must be [version, [integers], gauss] as random.getstate() gives")
    if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and isinstance(numpy_state[1], list)):
        raise _Damaged("rng.numpy must be [name, [integers], pos, has_gauss, gauss] as numpy gives")


def restore_train_state(
    state: TrainState, *, model, optimizer, scheduler, scaler, callbacks, ema=None
) -> dict[str, torch.Tensor]:
    """Put everything back (the weights' moving average too, under --ema); returns the epoch's running sums."""
    try:
        if ema is not None:  # every tensor of the average must be there, with its shape: strict
            ema.load_state_dict(strip_prefix(state.tensors, "ema."))
        return _restore(state, model, optimizer, scheduler, scaler, callbacks)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        first = first_line(error)
        raise ConfigError(f"the training state does not fit this run (damaged, or another model): {first}") from error


def _restore(state: TrainState, model, optimizer, scheduler, scaler, callbacks) -> dict[str, torch.Tensor]:
    model.load_state_dict(strip_prefix(state.tensors, "model."))
    saved = state.record["optimizer"]
    optimizer_state: dict[int, dict] = {int(i): dict(values) for i, values in saved["state"].items()}
    for key, value in state.tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": saved["param_groups"]})
    scheduler.load_state_dict(state.record["scheduler"])
    if state.record["scaler"]:  # empty when saved without fp16: a run resumed in fp16 starts its scale afresh
        scaler.load_state_dict(state.record["scaler"])
    for name, callback in callbacks:
        callback.load_state_dict(state.record["callbacks"].get(name, {}))
    torch.set_rng_state(state.tensors["rng.torch"])
    if torch.cuda.is_available():  # each saved GPU's generator to that GPU, where it exists here
        for key in (k for k in state.tensors if k.startswith("rng.cuda.")):
            index = int(key.rsplit(".", 1)[1])
            if index < torch.cuda.device_count():
                torch.cuda.set_rng_state(state.tensors[key], index)
    python_state = state.record["rng"]["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state.record["rng"]["numpy"]
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    return {name: value[0] for name, value in strip_prefix(state.tensors, "running.").items()}


def _jsonable(value):
    """Tuples to lists, recursively, and anything not JSON (the schedule's lambdas) to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None
