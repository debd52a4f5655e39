"""The run configuration: defaults, a TOML file, then command-line flags, in that order.

Every key of a config file is the name of a `tlcore run` option with
underscores (``batch_size = 64``). config.json in the run folder holds the
fully resolved configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from tlcore.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant")
AUGMENTS = ("standard", "none")
BN_MODES = ("frozen", "train")
PIPELINES = ("auto", "memory", "loader")
DECODERS = ("cpu", "device")
SWITCHES = ("auto", "on", "off")


@dataclass
class RunConfig:
    """Everything a run needs; each field is a `tlcore run` option."""

    # what to train
    backbone: str = "timm:tf_efficientnet_lite0"  # provider:model
    weights: str = "pretrained"  # pretrained | none | a weights file, folder or run folder
    dataset: str = "digits"  # the embedded default needs no download
    data_dir: str | None = None
    head: str = "linear"
    head_hidden: int = 512
    head_dropout: float = 0.0
    freeze: str = "none"
    freeze_to: str | None = None  # partial: a layer-group name, or how many groups from the input
    unfreeze_start: int = 1  # gradual: head-only epochs before the first group unfreezes
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more group
    bn_mode: str = "frozen"  # frozen layers' norm statistics: "frozen" or "train"
    cache_features: bool = False  # frozen backbone: compute features once, train the head on them
    # how long and how
    epochs: int = 3
    batch_size: int = 64
    accumulate: int = 1  # micro-batches per optimizer step: the effective batch is batch_size x accumulate
    lr: float = 2e-3
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.01  # not applied to biases and norm weights
    schedule: str = "cosine"
    warmup_epochs: float = 0.5  # linear warmup before the cosine decay
    step_size: int = 7  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    layer_decay: float | None = None  # discriminative rates: each group from the head down gets this factor more
    lr_mults: str | None = None  # explicit per-group rate multipliers, "stem=0.1,layer4=0.5,head=1"
    label_smoothing: float = 0.0
    class_weights: str | None = None  # loss weights: "auto" (inverse class frequency) or one number per class
    balanced_sampler: bool = False  # draw training images so that every class is seen equally often
    image_size: int | None = None  # None: the backbone's own input size
    augment: str = "standard"
    val_fraction: float = 0.2  # held out when a dataset has no validation split
    # where and how
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    workers: int | None = None  # DataLoader workers; None: 0 for in-memory data, else min(8, cpus)
    pipeline: str = "auto"  # memory: in-memory data cut and augmented on the device; loader: DataLoader workers
    decode: str = "cpu"  # device: JPEG files decoded on the GPU (nvJPEG) instead of in workers
    channels_last: str = "auto"  # auto: channels-last memory format on CUDA and on the CPU with oneDNN
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # distributed runs: BatchNorm statistics over all processes' batches
    seed: int = 0
    output: str | None = None  # None: runs/<dataset>-<backbone>-<time>
    callbacks: list[str] = field(default_factory=list)  # empty: the defaults; "+name" adds, "-name" removes
    early_stopping_patience: int = 0  # epochs without val_acc improvement before stopping; 0 turns it off
    download: bool = True  # let datasets fetch missing files when the network allows
    strict: bool = False  # stop at an undecodable image instead of skipping it
    skip_nonfinite: bool = False  # skip batches whose loss is NaN or infinite (one host sync per step)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)


# The help text of each option of `tlcore run` and `tlcore plan` (one entry per RunConfig field).
HELP = {
    "backbone": "provider:model, e.g. torchvision:resnet18 or timm:tf_efficientnet_lite0",
    "weights": "pretrained | none | a .safetensors/.pth/.pt file, a folder holding one, or an earlier run folder",
    "dataset": "a dataset name (see `tlcore list datasets`)",
    "data_dir": "where the dataset's files are",
    "head": "classification head (see `tlcore list heads`)",
    "head_hidden": "hidden width of the mlp head",
    "head_dropout": "dropout in the head, in [0, 1)",
    "freeze": "freeze policy (see `tlcore list freeze`)",
    "freeze_to": "partial policy: freeze the groups up to this group name, or this many groups",
    "unfreeze_start": "gradual policy: head-only epochs before the first group unfreezes",
    "unfreeze_every": "gradual policy: epochs between unfreezing one more group, from the top",
    "bn_mode": "norm statistics of frozen layers: frozen | train",
    "cache_features": "frozen backbone only: compute features once and train the head on them",
    "epochs": "number of epochs",
    "batch_size": "images per step (per process in a distributed run)",
    "accumulate": "micro-batches of --batch-size per optimizer step (gradient accumulation)",
    "lr": "peak learning rate (of the head; groups may scale it)",
    "optimizer": "adamw | sgd",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (not applied to biases and norm weights)",
    "schedule": "cosine (after --warmup-epochs) | onecycle | step | constant",
    "warmup_epochs": "linear warmup length in epochs (cosine and constant schedules)",
    "step_size": "step schedule: epochs between decays",
    "gamma": "step schedule: decay factor",
    "layer_decay": "discriminative rates: the last group gets lr x d, the one before x d^2, down to the stem",
    "lr_mults": "per-group rate multipliers, e.g. stem=0.1,layer4=0.5,head=1",
    "label_smoothing": "label smoothing in [0, 1)",
    "class_weights": "loss weights: auto (inverse class frequency) or one number per class, comma-separated",
    "balanced_sampler": "sample training images so that every class is drawn equally often",
    "image_size": "training image size (default: the dataset's preference, else the backbone's)",
    "augment": "standard | none",
    "val_fraction": "share of train held out when the dataset has no validation split",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "amp": "mixed precision on CUDA (bf16 where supported, else fp16)",
    "workers": "DataLoader worker processes (default: 0 for in-memory data, else up to 8)",
    "pipeline": "auto | memory (in-memory data held and augmented on the device, no DataLoader) | loader",
    "decode": "cpu | device (JPEG files decoded on the GPU with nvJPEG; needs CUDA and a dataset of files)",
    "channels_last": "auto (on with CUDA, and on the CPU with oneDNN) | on | off: channels-last layout for convolutions",
    "compile": "compile the model with torch.compile (slower start, faster steps)",
    "sync_bn": "distributed runs: synchronise BatchNorm statistics across processes",
    "seed": "random seed; runs on CPU with the same seed are identical",
    "output": "run folder to create; must not already hold files",
    "callbacks": "comma list of callbacks; +name / -name edit the defaults",
    "early_stopping_patience": "stop after this many epochs without a val_acc gain (0: never)",
    "download": "let datasets fetch missing files when the network allows",
    "strict": "stop at the first undecodable image instead of skipping it (skipped images are counted)",
    "skip_nonfinite": "skip batches whose loss is NaN or infinite instead of stopping (costs a host sync per step)",
}
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TYPES = get_type_hints(RunConfig)


def option_kind(key: str) -> type:
    """The plain type of a field: int, float, str, bool or list (Optional unwrapped)."""
    hint = _TYPES[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) is not list:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _coerce(key: str, value: Any) -> Any:
    """Check a value's type against the field; ints are accepted for floats, "a,b" or arrays for lists."""
    kind = option_kind(key)
    if value is None:
        if type(None) in typing.get_args(_TYPES[key]):
            return None
        raise ConfigError(f"option {key} must not be empty")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"option {key} is too large: {str(value)[:20]}…") from None
        if not math.isfinite(number):
            raise ConfigError(f"option {key} must be a finite number, got {value}")
        return number
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    if kind is str and (isinstance(value, (str, Path)) or (isinstance(value, int) and not isinstance(value, bool))):
        return str(value)  # ints too: freeze_to = 2 in a TOML file
    raise ConfigError(f"option {key} must be {kind.__name__}, got {value!r}")


def build_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then values from a config file, then overrides (flags); validated."""
    values: dict[str, Any] = {}
    for source in (file_values or {}, overrides or {}):
        for key, value in source.items():
            if key not in FIELDS:
                close = difflib.get_close_matches(key, list(FIELDS), n=1)
                hint = f"did you mean {close[0]}?" if close else f"accepted: {', '.join(FIELDS)}"
                raise ConfigError(f"unknown config key {key!r}; {hint}")
            if value is not None or source is file_values:
                values[key] = _coerce(key, value)
    config = RunConfig(**values)
    validate(config)
    return config


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file (top-level keys, or a [run] table)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error
    if set(data) == {"run"} and isinstance(data["run"], dict):
        data = data["run"]
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: [{key}] tables are not accepted; use top-level keys")
    return data


def _choice(key: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"{key} {value!r} is not accepted; accepted: {', '.join(accepted)}")


# Upper bounds on integer options, far above any real use: beyond them torch overflows or allocates without end.
INT_LIMITS = {
    "seed": 2**63 - 1,
    "epochs": 10**6,
    "batch_size": 2**20,
    "accumulate": 2**16,
    "image_size": 8192,
    "head_hidden": 2**16,
    "workers": 256,
    "step_size": 10**6,
    "unfreeze_start": 10**6,
    "unfreeze_every": 10**6,
    "early_stopping_patience": 10**6,
}


def validate(config: RunConfig) -> None:
    """Reject values no run can use, with one line naming the option and what is accepted."""
    for key, limit in INT_LIMITS.items():
        value = getattr(config, key)
        if value is not None and value > limit:
            raise ConfigError(f"{key} must be at most {limit}, got {value}")
    if config.seed < 0:
        raise ConfigError(f"seed must not be negative, got {config.seed}")
    if config.epochs <= 0:
        raise ConfigError(f"epochs must be a positive integer, got {config.epochs}")
    if config.batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {config.batch_size}")
    if config.accumulate <= 0:
        raise ConfigError(f"accumulate must be a positive integer, got {config.accumulate}")
    if not config.lr > 0:
        raise ConfigError(f"lr must be positive, got {config.lr}")
    if config.image_size is not None and config.image_size <= 0:
        raise ConfigError(f"image_size must be a positive integer, got {config.image_size}")
    if not 0.0 < config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    if not 0.0 <= config.head_dropout < 1.0:
        raise ConfigError(f"head_dropout must be in [0, 1), got {config.head_dropout}")
    if config.head_hidden <= 0:
        raise ConfigError(f"head_hidden must be a positive integer, got {config.head_hidden}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.weight_decay < 0 or config.momentum < 0 or config.warmup_epochs < 0:
        raise ConfigError("weight_decay, momentum and warmup_epochs must not be negative")
    if config.step_size <= 0 or not 0 < config.gamma <= 1:
        raise ConfigError("step_size must be positive and gamma in (0, 1]")
    if config.layer_decay is not None and not 0 < config.layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1], got {config.layer_decay}")
    if config.unfreeze_start < 0 or config.unfreeze_every < 1:
        raise ConfigError("unfreeze_start must be >= 0 and unfreeze_every >= 1")
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"workers must not be negative, got {config.workers}")
    if config.early_stopping_patience < 0:
        raise ConfigError(f"early_stopping_patience must not be negative, got {config.early_stopping_patience}")
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("augment", config.augment, AUGMENTS)
    _choice("bn_mode", config.bn_mode, BN_MODES)
    _choice("pipeline", config.pipeline, PIPELINES)
    _choice("decode", config.decode, DECODERS)
    _choice("channels_last", config.channels_last, SWITCHES)
    if config.device != "auto" and config.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {config.device!r} is not accepted; accepted: auto, cpu, cuda, cuda:N, mps")
