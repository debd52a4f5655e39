"""Checkpoints: weights in safetensors with everything needed to rebuild the model in its metadata."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlcore.backbone import INTERPOLATIONS
from tlcore.config import MAX_IMAGE_SIZE
from tlcore.errors import WeightsError
from tlcore.files import atomic_save_tensors, cpu_copy
from tlcore.messages import short_repr
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
    # temperature scaling (tlcore.calibration): predictions use softmax(logits / temperature); absent in files written
    # before calibration existed, which read as 1.0 (uncalibrated)
    temperature: float = 1.0
    # how the temperature was fitted: images, nll_before, nll_after, epoch; or why it was not ("reason"); may be empty
    calibration: dict = field(default_factory=dict)
    # "multiclass" (softmax over the classes) or "multilabel" (a sigmoid per class; tlcore.multilabel); absent in
    # files written before multi-label existed, which read as multiclass
    task: str = "multiclass"
    # multilabel: the probability at or above which each class is predicted, in ``classes`` order, chosen on the
    # validation split (tlcore.multilabel.choose_thresholds); None for multiclass
    thresholds: list[float] | None = None

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata is str to str: the whole record is one JSON string."""
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}
        return {"tlcore": json.dumps(record), "format": "pt"}


# Bounds far above any real use: beyond them a damaged file would make tlcore allocate without end.
MAX_CLASSES = 1_000_000
MAX_HEAD_HIDDEN = 2**16
MAX_RESIZE = 4 * MAX_IMAGE_SIZE  # image_size / crop_pct: the evaluation resize before the centre crop


class _Invalid(Exception):
    """One field of the metadata that does not hold what the format says (internal; becomes a WeightsError)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: object, name: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise _Invalid(f"{name} must be a{'' if empty else ' non-empty'} string, got {short_repr(value)}")
    return value


def _integer(value: object, name: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise _Invalid(f"{name} must be an integer in [{low}, {high}], got {short_repr(value)}")
    return value



def _triple(value: object, name: str, *, positive: bool) -> None:
    if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
        raise _Invalid(f"{name} must be a list of three finite numbers, got {short_repr(value)}")
    if positive and not all(v > 0 for v in value):
        raise _Invalid(f"{name} must be three positive numbers, got {value}")


def _check_preprocessing(pre: object, image_size: int) -> None:
    if not isinstance(pre, dict):
        raise _Invalid(f"preprocessing must be an object, got {short_repr(pre)}")
    _triple(pre.get("mean"), "preprocessing.mean", positive=False)
    _triple(pre.get("std"), "preprocessing.std", positive=True)
    _integer(pre.get("input_size"), "preprocessing.input_size", 1, MAX_IMAGE_SIZE)
    _integer(pre.get("min_size", 32), "preprocessing.min_size", 1, MAX_IMAGE_SIZE)
    interpolation = pre.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        accepted = ", ".join(INTERPOLATIONS)
        raise _Invalid(f"preprocessing.interpolation must be one of {accepted}, got {short_repr(interpolation)}")
    crop = pre.get("crop_pct", 0.875)
    if not _is_number(crop) or not 0 < crop <= 1 or image_size / crop > MAX_RESIZE:
        raise _Invalid(
            f"preprocessing.crop_pct must be a number in (0, 1] with image_size / crop_pct at most {MAX_RESIZE}, "
            f"got {short_repr(crop)}"
        )
    if not isinstance(pre.get("fixed_size", False), bool):
        raise _Invalid(f"preprocessing.fixed_size must be true or false, got {short_repr(pre.get('fixed_size'))}")


def _check_classes(classes: object) -> None:
    if not isinstance(classes, list) or not classes or len(classes) > MAX_CLASSES:
        raise _Invalid(f"classes must be a list of 1 to {MAX_CLASSES} names, got {short_repr(classes)}")
    for name in classes:
        if not isinstance(name, str):
            raise _Invalid(f"classes must be strings, got {short_repr(name)}")
    if len(set(classes)) != len(classes):
        seen: set[str] = set()
        twice = next(name for name in classes if name in seen or seen.add(name))
        raise _Invalid(f"classes must be unique, {twice!r} appears twice")


def _check_head_options(options: object) -> None:
    if not isinstance(options, dict):
        raise _Invalid(f"head_options must be an object, got {short_repr(options)}")
    if "hidden" in options:
        _integer(options["hidden"], "head_options.hidden", 1, MAX_HEAD_HIDDEN)
    if "dropout" in options:
        dropout = options["dropout"]
        if not _is_number(dropout) or not 0 <= dropout < 1:
            raise _Invalid(f"head_options.dropout must be a number in [0, 1), got {short_repr(dropout)}")


def _check_data(data: object) -> None:
    if not isinstance(data, dict):
        raise _Invalid(f"data must be an object, got {short_repr(data)}")
    for key in ("dataset", "data_dir"):
        if data.get(key) is not None:
            _text(data[key], f"data.{key}")
    if data.get("seed") is not None:
        _integer(data["seed"], "data.seed", 0, 2**63 - 1)
    fraction = data.get("val_fraction")
    if fraction is not None and (not _is_number(fraction) or not 0 < fraction < 1):
        raise _Invalid(f"data.val_fraction must be a number in (0, 1), got {short_repr(fraction)}")
    if "folds" in data or "fold" in data:  # a cross-validation fold (tlcore.cv): fold in [1, folds]
        folds = _integer(data.get("folds"), "data.folds", 2, 1000)
        _integer(data.get("fold"), "data.fold", 1, folds)
    if "flip_invariant" in data and not isinstance(data["flip_invariant"], bool):  # whether TTA may mirror
        raise _Invalid(f"data.flip_invariant must be true or false, got {short_repr(data['flip_invariant'])}")
    if "options" in data:
        _check_plugin_options(data["options"])


MAX_PLUGIN_OPTIONS = 1000  # declared options recorded; far above what installed plugins declare


def _check_plugin_options(options: object) -> None:
    """data.options: the plugins' declared options (tlcore.plugin_options), names to plain values.

    Their types and limits are checked again, by the declaring plugin's rules, when eval rebuilds the data.
    """
    from tlcore.plugin_options import MAX_TEXT, OPTION_NAME

    if not isinstance(options, dict) or len(options) > MAX_PLUGIN_OPTIONS:
        raise _Invalid(f"data.options must be an object of at most {MAX_PLUGIN_OPTIONS} options, got {short_repr(options)}")
    for name, value in options.items():
        if not OPTION_NAME.fullmatch(name):
            raise _Invalid(f"data.options has a key that is no option name: {short_repr(name)}")
        plain = value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value))
        if not plain and not (isinstance(value, str) and len(value) <= MAX_TEXT):
            raise _Invalid(f"data.options.{name} must be text, a number, true/false or null, got {short_repr(value)}")


# fields a file may lack: written by an older tlcore (their defaults apply)
OPTIONAL_FIELDS = frozenset({"data", "temperature", "calibration", "task", "thresholds"})
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6


def _check_calibration(temperature: object, calibration: object) -> None:
    # above 0 and finite, within bounds far outside any fitted value (fits lie in [0.01, 100]), so that
    # logits / temperature cannot overflow
    if not _is_number(temperature) or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise _Invalid(
            f"temperature must be a finite number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], "
            f"got {short_repr(temperature)}"
        )
    if not isinstance(calibration, dict):
        raise _Invalid(f"calibration must be an object, got {short_repr(calibration)}")


def _check_task(task: object, thresholds: object, classes: list, temperature: object = 1.0) -> None:
    """task one of tlcore.multilabel.TASKS; multilabel needs one threshold in [0, 1] per class and temperature 1,
    multiclass no thresholds."""
    from tlcore.multilabel import TASKS

    if task not in TASKS:
        raise _Invalid(f"task must be one of {', '.join(TASKS)}, got {short_repr(task)}")
    if task == "multiclass":
        if thresholds is not None:
            raise _Invalid(
                "thresholds are given but task is multiclass (a file without task reads as multiclass); a "
                "multilabel checkpoint says task multilabel"
            )
        return
    if not isinstance(thresholds, list):
        raise _Invalid(f"thresholds must be a list of {len(classes)} numbers in [0, 1] (one per class), got "
                       f"{short_repr(thresholds)}")
    if len(thresholds) != len(classes):
        raise _Invalid(f"thresholds must hold one number per class: {len(classes)}, got {len(thresholds)}")
    for index, value in enumerate(thresholds):
        if not (_is_number(value) and 0 <= value <= 1):
            raise _Invalid(f"thresholds[{index}] must be a number in [0, 1], got {short_repr(value)}")
    if temperature != 1.0:
        raise _Invalid(f"temperature must be 1 for a multilabel checkpoint (no softmax to scale), got {temperature!r}")


def validate_metadata(record: object, path: Path | str) -> dict:
    """Check a checkpoint's metadata record against the format before anything uses it; return it.

    The one check behind every reader (``run --weights``, ``eval``, ``predict``,
    ``export``, :func:`tlcore.load_checkpoint`): classes a non-empty list of
    unique strings; preprocessing mean and std three finite numbers (std > 0),
    input_size and image_size integers in [1, MAX_IMAGE_SIZE], crop_pct in
    (0, 1], interpolation one of INTERPOLATIONS; head options in range;
    names strings; epoch a non-negative integer; temperature (absent: 1.0) a
    finite number in [MIN_TEMPERATURE, MAX_TEMPERATURE], calibration an object; task (absent: multiclass)
    multiclass or multilabel, with one threshold in [0, 1] per class for multilabel. Keys a newer tlcore may add
    are ignored. Raises WeightsError naming the file and the first bad field.
    """
    try:
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise WeightsError(f"{path} is not a tlcore checkpoint (no tlcore metadata); pass a file a run wrote")
        version = record.get("format_version", 0)
        if not _is_int(version):
            raise _Invalid(f"format_version must be an integer, got {short_repr(version)}")
        if version > FORMAT_VERSION:
            raise WeightsError(f"{path} was written by a newer tlcore (format {version}); upgrade tlcore to read it")
        missing = sorted(set(CheckpointInfo.__dataclass_fields__) - set(record) - OPTIONAL_FIELDS)
        if missing:
            raise _Invalid(f"metadata lacks {', '.join(missing)}")
        for name in ("backbone", "head"):
            _text(record[name], name)
        _text(record["weights"], "weights", empty=True)
        _check_classes(record["classes"])
        _check_head_options(record["head_options"])
        image_size = _integer(record["image_size"], "image_size", 1, MAX_IMAGE_SIZE)
        _check_preprocessing(record["preprocessing"], image_size)
        _integer(record["epoch"], "epoch", 0, 2**31)
        if not isinstance(record["metrics"], dict):
            raise _Invalid(f"metrics must be an object, got {short_repr(record['metrics'])}")
        _check_data(record.get("data", {}))
        _check_calibration(record.get("temperature", 1.0), record.get("calibration", {}))
        task, temperature = record.get("task", "multiclass"), record.get("temperature", 1.0)
        _check_task(task, record.get("thresholds"), record["classes"], temperature)
    except _Invalid as invalid:
        raise WeightsError(f"{path} is a damaged tlcore checkpoint: {invalid}") from None
    return record


def save_checkpoint(path: Path, model: torch.nn.Module, info: CheckpointInfo) -> None:
    """Write the model's state dict and its info atomically."""
    # cpu_copy: safetensors needs contiguous, unshared tensors (channels_last, tied weights)
    tensors = {key: cpu_copy(value) for key, value in model.state_dict().items()}
    atomic_save_tensors(Path(path), tensors, info.to_metadata())


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Tensors and info of a tlcore checkpoint; WeightsError for any other file or damaged metadata."""
    weights = read_weights_file(Path(path))  # validates the metadata (validate_metadata) as it reads it
    meta = validate_metadata(weights.tlcore_meta, weights.path)
    fields = {k: meta[k] for k in CheckpointInfo.__dataclass_fields__ if k in meta}
    return weights.tensors, CheckpointInfo(**fields)
