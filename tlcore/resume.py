"""Exact resume: everything a run needs to continue as if it had never stopped, without pickle.

One file, train_state.safetensors, written atomically: tensors (model,
optimizer state, random generators, the epoch's running sums) plus a JSON
record in its metadata (epoch and step, schedule, gradient scaler, history,
callbacks' state, Python and NumPy generators, the configuration).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlcore.background import BackgroundWrite
from tlcore.errors import ConfigError
from tlcore.files import atomic_save_tensors
from tlcore.weights import read_weights_file

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
) -> None:
    """Write the state atomically; ``record`` holds the position (epoch, epoch_step, step, ...).

    Everything is copied now; with ``writer`` the serialising and writing happen on its thread.
    """
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict] = {}
    for index, values in optimizer_state["state"].items():
        plain_state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().clone().contiguous()
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
        atomic_save_tensors(Path(path), tensors, metadata)

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
    if not isinstance(record["config"], dict) or not isinstance(record["history"], list):
        raise ConfigError(f"{path} is a damaged training state (config or history of the wrong type)")
    return TrainState(weights.tensors, record)


def restore_train_state(state: TrainState, *, model, optimizer, scheduler, scaler, callbacks) -> dict[str, torch.Tensor]:
    """Put everything back; returns the epoch's running sums."""
    try:
        return _restore(state, model, optimizer, scheduler, scaler, callbacks)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"the training state does not fit this run (damaged, or another model): {first}") from error


def _restore(state: TrainState, model, optimizer, scheduler, scaler, callbacks) -> dict[str, torch.Tensor]:
    model.load_state_dict({k[len("model.") :]: v for k, v in state.tensors.items() if k.startswith("model.")})
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
    return {k[len("running.") :]: v[0] for k, v in state.tensors.items() if k.startswith("running.")}


def _jsonable(value):
    """Tuples to lists, recursively, and anything not JSON (the schedule's lambdas) to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None
