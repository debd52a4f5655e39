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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from tlcore.errors import ConfigError

if typing.TYPE_CHECKING:
    from tlcore.plugins import PluginHost

MAX_IMAGE_SIZE = 8192  # pixels per side; far above any real use, and checkpoints are held to it too


def option(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    check: Callable[[str, Any], None] | None = None,
    default_factory: Callable[[], Any] | None = None,
    words: tuple[str, ...] = (),
) -> Any:
    """A RunConfig field with everything about its option declared in one place.

    ``help`` is the option's help text (``tlcore run --help``); ``choices`` the
    accepted words; ``at_least``/``above``/``at_most``/``below`` its numeric
    bounds (inclusive/exclusive); ``check(key, value)`` a further check that
    raises ConfigError; ``words`` the words a numeric option accepts besides
    numbers (``lr = "auto"``). :func:`validate` enforces them all and the
    command line's help is built from them, so an option, its config-file
    key and its limits cannot drift apart.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "at_least": at_least,
        "above": above,
        "at_most": at_most,
        "below": below,
        "check": check,
        "words": words,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _finite_numbers(key: str, text: str, example: str, given: str | None = None) -> list[float]:
    """Comma-separated finite, non-negative numbers, not all zero (their count is checked against the data later)."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"{key} must be comma-separated numbers, e.g. {example}; got {part.strip()!r}") from None
        if not math.isfinite(values[-1]) or values[-1] < 0:
            raise ConfigError(f"{key} entries must be finite, non-negative numbers, got {part.strip()}")
    if not any(values):
        raise ConfigError(f"{key} must not be all zero: nothing would be learned, got {given or text!r}")
    return values


def _check_class_weights(key: str, value: str | None) -> None:
    if value is not None and value != "auto":
        _finite_numbers(key, value, "auto or 1,2.5")


def _check_lr_mults(key: str, value: str | None) -> None:
    """NAME=FACTOR items with finite, non-negative factors, not all zero (names are checked against the backbone)."""
    if value is None:
        return
    factors = []
    for item in value.split(","):
        name, sep, factor = item.strip().partition("=")
        if not sep or not name:
            raise ConfigError(f"{key} item {item.strip()!r} is not NAME=FACTOR; example: stem=0.1,layer4=0.5")
        factors.append(factor)
    _finite_numbers(key, ",".join(factors), "stem=0.1,layer4=0.5", repr(value))


def _check_device(key: str, value: str) -> None:
    if value != "auto" and value.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key} {value!r} is not accepted; accepted: auto, cpu, cuda, cuda:N, mps")


MAX_STEPS = 10**6  # epochs, step sizes, warmups: far above any real use, below where counts overflow


@dataclass
class RunConfig:
    """Everything a run needs; each field is a `tlcore run` option and a config-file key, declared once here."""

    # what to train
    backbone: str = option(
        "timm:tf_efficientnet_lite0", "provider:model, e.g. torchvision:resnet18 or timm:tf_efficientnet_lite0"
    )
    weights: str = option(
        "pretrained", "pretrained | none | a .safetensors/.pth/.pt file, a folder holding one, or an earlier run folder"
    )
    dataset: str = option("digits", "a dataset name (see `tlcore list datasets`)")  # the embedded default needs no download
    data_dir: str | None = option(None, "where the dataset's files are")
    task: str = option(
        "multiclass", "multiclass: one class per image (softmax, cross-entropy); multilabel: any number per image "
        "(sigmoid per class, binary cross-entropy, per-class thresholds chosen on validation, mAP)",
        choices=("multiclass", "multilabel"),
    )
    head: str = option("linear", "classification head (see `tlcore list heads`)")
    head_hidden: int = option(512, "hidden width of the mlp head", at_least=1, at_most=2**16)
    head_dropout: float = option(0.0, "dropout in the head, in [0, 1)", at_least=0, below=1)
    freeze: str = option("none", "freeze policy (see `tlcore list freeze`)")
    freeze_to: str | None = option(None, "partial policy: freeze the groups up to this group name, or this many groups")
    unfreeze_start: int = option(
        1, "gradual policy: head-only epochs before the first group unfreezes", at_least=0, at_most=MAX_STEPS
    )
    unfreeze_every: int = option(
        1, "gradual policy: epochs between unfreezing one more group, from the top", at_least=1, at_most=MAX_STEPS
    )
    bn_mode: str = option("frozen", "norm statistics of frozen layers", choices=("frozen", "train"))
    cache_features: bool = option(False, "frozen backbone only: compute features once and train the head on them")
    # how long and how
    epochs: int = option(3, "number of epochs", at_least=1, at_most=MAX_STEPS)
    batch_size: int = option(64, "images per step (per process in a distributed run)", at_least=1, at_most=2**20)
    accumulate: int = option(
        1, "micro-batches of --batch-size per optimizer step (gradient accumulation)", at_least=1, at_most=2**16
    )
    lr: float | str = option(
        2e-3, "peak learning rate (of the head; groups may scale it), or auto: run the LR range test "
        "(tlcore lr-find) first and use its suggestion", above=0, words=("auto",),
    )
    optimizer: str = option("adamw", "the optimizer", choices=("sgd", "adamw"))
    momentum: float = option(0.9, "SGD momentum", at_least=0)
    weight_decay: float = option(0.01, "weight decay (not applied to biases and norm weights)", at_least=0)
    schedule: str = option(
        "cosine", "cosine (after --warmup-epochs), onecycle, step or constant",
        choices=("cosine", "onecycle", "step", "constant"),
    )
    warmup_epochs: float = option(
        0.5, "linear warmup length in epochs (cosine and constant schedules)", at_least=0, at_most=MAX_STEPS
    )
    step_size: int = option(7, "step schedule: epochs between decays", at_least=1, at_most=MAX_STEPS)
    gamma: float = option(0.1, "step schedule: decay factor, in (0, 1]", above=0, at_most=1)
    layer_decay: float | None = option(
        None, "discriminative rates: the last group gets lr x d, the one before x d^2, down to the stem", above=0, at_most=1
    )
    lr_mults: str | None = option(
        None, "per-group rate multipliers, e.g. stem=0.1,layer4=0.5,head=1", check=_check_lr_mults
    )
    label_smoothing: float = option(0.0, "label smoothing in [0, 1)", at_least=0, below=1)
    mixup: float = option(
        0.0, "mixup alpha: blend each training batch with itself reversed, labels too, by a Beta(alpha, alpha) "
        "share (0: off; 0.2 to 0.4 typical)", at_least=0, at_most=100,
    )
    cutmix: float = option(
        0.0, "cutmix alpha: paste a box of the reversed batch into each training batch, labels mixed by its area "
        "(0: off; 1.0 typical)", at_least=0, at_most=100,
    )
    mix_prob: float = option(1.0, "with --mixup or --cutmix: the share of training batches mixed", at_least=0, at_most=1)
    mix_switch_prob: float = option(
        0.5, "with both --mixup and --cutmix: the share of mixed batches that use cutmix", at_least=0, at_most=1
    )
    ema: float | None = option(
        None, "keep an exponential moving average of the weights with this decay (e.g. 0.999), validated each "
        "epoch; the checkpoints hold it when it validates better", above=0, below=1,
    )
    clip_grad: float | None = option(
        None, "clip the gradients at each optimizer step: their total norm (--clip-mode norm) or each value "
        "(value) to at most this", above=0,
    )
    clip_mode: str = option("norm", "what --clip-grad limits", choices=("norm", "value"))
    class_weights: str | None = option(
        None, "loss weights: auto (inverse class frequency; multilabel: BCE pos_weight negatives/positives per "
        "class) or one number per class, comma-separated",
        check=_check_class_weights,
    )
    balanced_sampler: bool = option(False, "sample training images so that every class is drawn equally often")
    image_size: int | None = option(
        None, "training image size (default: the dataset's preference, else the backbone's)",
        at_least=1, at_most=MAX_IMAGE_SIZE,
    )
    augment: str = option(
        "standard", "training augmentation: standard (random resized crop, flip where the dataset allows), none, or "
        "standard plus torchvision's randaugment, trivialaugment or augmix policy",
        choices=("standard", "none", "randaugment", "trivialaugment", "augmix"),
    )
    val_fraction: float = option(0.2, "share of train held out when the dataset has no validation split", above=0, below=1)
    folds: int | None = option(
        None, "cross-validation: split the training data into this many stratified folds (tlcore cv runs each; "
        "tlcore run needs --fold too)", at_least=2, at_most=1000,
    )
    fold: int | None = option(
        None, "with --folds: the fold (1 to --folds) held out as validation; the other folds train", at_least=1,
        at_most=1000,
    )
    # where and how
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", check=_check_device)  # auto: cuda, then mps, then cpu
    amp: bool = option(
        True, "mixed precision: on CUDA bf16 where supported, else fp16; on the CPU bf16 only for backbone families "
        "measured faster there (tlcore/device.py)"
    )
    workers: int | None = option(
        None, "DataLoader worker processes (default on the CPU: the thread budget's share of the cores; elsewhere 0 "
        "for in-memory data, else up to 8)", at_least=0, at_most=256
    )
    threads: int | None = option(
        None, "compute threads (default on the CPU: the cores not given to --workers; elsewhere torch's own)",
        at_least=1, at_most=1024,
    )
    pipeline: str = option(
        "auto", "memory: in-memory data held and augmented on the device, no DataLoader; loader: DataLoader workers",
        choices=("auto", "memory", "loader"),
    )
    decode: str = option(
        "cpu", "device: JPEG files decoded on the GPU with nvJPEG; needs CUDA and a dataset of files",
        choices=("cpu", "device"),
    )
    channels_last: str = option(
        "auto", "channels-last layout for convolutions (auto: on with CUDA, and on the CPU with oneDNN)",
        choices=("auto", "on", "off"),
    )
    compile: bool = option(False, "compile the model with torch.compile (slower start, faster steps)")
    sync_bn: bool = option(False, "distributed runs: synchronise BatchNorm statistics across processes")
    seed: int = option(0, "random seed; runs on CPU with the same seed are identical", at_least=0, at_most=2**63 - 1)
    output: str | None = option(None, "run folder to create; must not already hold files")  # None: runs/<dataset>-...
    callbacks: list[str] = option(
        help="comma list of callbacks; +name / -name edit the defaults", default_factory=list
    )  # empty: the defaults
    quiet: bool = option(
        False, "print no banner, progress bar or periodic progress lines: only one summary line per epoch and the end"
    )
    early_stopping_patience: int = option(
        0, "stop after this many epochs without a val_acc (multilabel: val_map) gain (0: never)",
        at_least=0, at_most=MAX_STEPS,
    )
    download: bool = option(True, "let datasets fetch missing files when the network allows")
    strict: bool = option(False, "stop at the first undecodable image instead of skipping it (skipped images are counted)")
    skip_nonfinite: bool = option(
        False, "skip batches whose loss is NaN or infinite instead of stopping (costs a host sync per step)"
    )
    calibrate: bool = option(
        True, "fit a temperature on each epoch's validation logits (temperature scaling) and store it in the "
        "checkpoints; predict, eval and export use it"
    )
    # The options plugins declare (tlcore.plugin_options), name to value, every declared one (defaults included).
    # Not a RunConfig option itself: each entry is its own flag and top-level config-file key, so it is kept
    # out of FIELDS; build_config fills and checks it, and accepts it whole from config.json (--resume).
    plugin_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)


def _help(f: dataclasses.Field) -> str:
    """The option's help text: its declared help, and its choices when it has some."""
    choices = f.metadata.get("choices")
    return f.metadata["help"] + (f" (one of: {', '.join(choices)})" if choices else "")



FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "plugin_options"}
# The help text of each option of `tlcore run` and `tlcore plan`, derived from the declarations above.
HELP = {name: _help(f) for name, f in FIELDS.items()}
OPTIMIZERS = FIELDS["optimizer"].metadata["choices"]
SCHEDULES = FIELDS["schedule"].metadata["choices"]
AUGMENTS = FIELDS["augment"].metadata["choices"]
BN_MODES = FIELDS["bn_mode"].metadata["choices"]
PIPELINES = FIELDS["pipeline"].metadata["choices"]
DECODERS = FIELDS["decode"].metadata["choices"]
SWITCHES = FIELDS["channels_last"].metadata["choices"]
CLIP_MODES = FIELDS["clip_mode"].metadata["choices"]
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
    words = FIELDS[key].metadata.get("words") or ()
    if words and isinstance(value, str):  # a numeric option that also takes words: lr = "auto", or "2e-3" from a flag
        if value in words:
            return value
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"option {key} must be a number or {' or '.join(words)}, got {value!r}") from None
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


def build_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, host: PluginHost | None = None
) -> RunConfig:
    """Defaults, then values from a config file, then overrides (flags); validated.

    Keys besides the RunConfig fields are the options the loaded plugins
    declare (:mod:`tlcore.plugin_options`), collected into ``plugin_options``
    with their defaults; a ``plugin_options`` table (config.json's record) gives
    values under the file's and flags' own. ConfigError for an unknown key or a
    bad value; NameConflictError when two plugins declare one option. ``host``:
    the plugins to ask (default: the process-wide host).
    """
    from tlcore.plugin_options import declared_options
    from tlcore.plugins import get_host

    declared = declared_options(host or get_host())  # the plugins' options: keys besides the fields
    values: dict[str, Any] = {}
    plugin_given: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for source in (file_values or {}, overrides or {}):
        for key, value in source.items():
            if key == "plugin_options":  # config.json's record of them (--resume), or a checkpoint's (eval)
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"option plugin_options must be a table of plugin options, got {value!r}")
                recorded.update(value or {})
                continue
            if key not in FIELDS:
                if key in declared.options or key in declared.conflicts:
                    if value is not None or source is file_values:
                        plugin_given[key] = value
                    continue
                known = [*FIELDS, *declared.options]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"accepted: {', '.join(known)}"
                raise ConfigError(f"unknown config key {key!r}; {hint}")
            if value is not None or source is file_values:
                values[key] = _coerce(key, value)
    if values.get("data_dir"):  # stored absolute, so eval, report and --resume work from any directory
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    config = RunConfig(**values, plugin_options=declared.resolve(plugin_given, recorded))
    validate(config)
    return config


MAX_TOML_NESTING = 64  # brackets and braces open at once; options need two (a list inside [run])


def _nesting(text: str) -> int:
    """An upper bound on how deeply a TOML text nests arrays and inline tables (brackets in strings count too).

    Over-counting only matters past MAX_TOML_NESTING, which no real config reaches.
    """
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return deepest


YAML_SUFFIXES = (".yaml", ".yml")


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file (top-level keys, or a ``run`` table); ConfigError for anything else.

    ``.yaml``/``.yml`` files are YAML (:func:`_load_yaml`), anything else TOML.
    Both accept the same keys with the same checks. A file nested deeper than
    MAX_TOML_NESTING is refused before parsing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read as UTF-8 text: {error}") from error
    if path.suffix.lower() in YAML_SUFFIXES:
        return _top_level_options(path, _load_yaml(path, text), "mappings")
    depth = _nesting(text)
    if depth > MAX_TOML_NESTING:  # tomllib recurses per level: thousands of them exhaust the stack
        raise ConfigError(
            f"config file {path} nests arrays or tables {depth} deep; accepted: at most {MAX_TOML_NESTING} "
            "(options are top-level keys)"
        )
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        reason = str(error) if not isinstance(error, RecursionError) else "nested too deeply"
        raise ConfigError(f"config file {path} is not valid TOML: {reason}") from error
    return _top_level_options(path, data, "tables")


def _top_level_options(path: Path, data: Any, tables: str) -> dict[str, Any]:
    """The options of a parsed file: its top level, or its only key ``run``; nested tables refused."""
    if data is None:  # an empty YAML document, like an empty TOML file, sets nothing
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of option names to values at the top level, "
            f"got a {type(data).__name__}"
        )
    if set(data) == {"run"} and isinstance(data["run"], dict):
        data = data["run"]
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {path}: option names are text, got {key!r}")
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: [{key}] {tables} are not accepted; use top-level keys")
    return data


def _load_yaml(path: Path, text: str) -> Any:
    """Parse a YAML config with PyYAML's safe loader, refusing what a config file never needs.

    Refused with one ConfigError line: nesting deeper than MAX_TOML_NESTING
    (checked on the event stream before anything is built: the constructor
    recurses per level), anchors and aliases (a few lines could expand to
    billions of values), a key given twice in one mapping (YAML would keep
    the last one silently), and anything that is not valid YAML. Booleans are
    only true/false and floats may omit the dot (``1e-3``), as in YAML 1.2,
    so ``channels_last: on`` stays the word ``on``.
    """
    import yaml  # only when a YAML file is read: `tlcore --help` need not load it

    loader_class = _yaml_loader_class()
    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader_class):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ConfigError(f"config file {path}: YAML anchors and aliases are not accepted; write each value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_TOML_NESTING:
                    raise ConfigError(
                        f"config file {path} nests lists or mappings more than {MAX_TOML_NESTING} deep; "
                        "options are top-level keys"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        documents = list(yaml.load_all(text, Loader=loader_class))
    except ConfigError:
        raise
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_reason(error)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid YAML: nested too deeply") from None
    except Exception as error:  # PyYAML's constructors raise plain errors too: 2001-13-14, !!float abc, !!int
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {reason}") from None
    if len(documents) > 1:
        raise ConfigError(f"config file {path} holds {len(documents)} YAML documents; accepted: one")
    return documents[0] if documents else None


_YAML_LOADER: Any = None


def _yaml_loader_class() -> Any:
    """A SafeLoader with YAML 1.2 booleans and floats that refuses a mapping key given twice (built once)."""
    global _YAML_LOADER
    if _YAML_LOADER is not None:
        return _YAML_LOADER
    import re

    import yaml

    class ConfigLoader(yaml.SafeLoader):
        pass

    # YAML 1.1 resolvers read yes/no/on/off as booleans and 1e-3 as text; keep 1.2's true/false and 1e-3
    replaced = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")
    ConfigLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    ConfigLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    )

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice (line {line})")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    _YAML_LOADER = ConfigLoader
    return ConfigLoader


def _yaml_reason(error: Exception) -> str:
    """PyYAML's message on one line: the problem and where (``... at line 3, column 5``)."""
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _bound_error(key: str, value: float, meta: Mapping[str, Any], integer: bool) -> str:
    """The one line that says which values ``key`` accepts."""
    low, above, high, below = meta["at_least"], meta["above"], meta["at_most"], meta["below"]
    lower = low if low is not None else above
    upper = high if high is not None else below
    if lower is not None and upper is not None and upper <= 256:  # a narrow range (a share, a worker count): state it whole
        left, right = "[" if low is not None else "(", "]" if high is not None else ")"
        return f"{key} must be in {left}{_number(lower)}, {_number(upper)}{right}, got {value}"
    if upper is not None and value > upper:
        return f"{key} must be at most {_number(upper)}, got {value}"
    if integer and low == 1:
        return f"{key} must be a positive integer, got {value}"
    if low == 0:
        return f"{key} must not be negative, got {value}"
    if above == 0:
        return f"{key} must be positive, got {value}"
    return f"{key} must be at least {_number(lower)}, got {value}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_option(key: str, value: Any) -> None:
    """Check one value against RunConfig field ``key``'s declared choices, bounds and check (None passes).

    For commands that take a run option outside a run (``eval --workers``,
    ``eval --batch-size``): the same limits, the same one-line ConfigError.
    """
    meta = FIELDS[key].metadata
    if value is None:
        return
    kind = option_kind(key)
    if isinstance(value, str) and value in (meta.get("words") or ()):
        return
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"option {key} must be a finite number, got {value}")
    _check_value(key, value, meta)


def validate(config: RunConfig) -> None:
    """Reject values no run can use, with one line naming the option and what is accepted.

    Each field's choices, bounds and check come from its declaration in
    :class:`RunConfig`; raises ConfigError.
    """
    for key, f in FIELDS.items():
        value = getattr(config, key)
        if value is not None:
            _check_value(key, value, f.metadata)


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """One value against its field's declared choices, bounds and check; ConfigError naming ``key``."""
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} {value!r} is not accepted; accepted: {', '.join(choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, above, high, below = meta["at_least"], meta["above"], meta["at_most"], meta["below"]
        if (
            (low is not None and not value >= low)
            or (above is not None and not value > above)
            or (high is not None and not value <= high)
            or (below is not None and not value < below)
        ):
            raise ConfigError(_bound_error(key, value, meta, isinstance(value, int)))
    if isinstance(value, str) and meta.get("words") and value not in meta["words"]:
        raise ConfigError(f"{key} must be a number or {' or '.join(meta['words'])}, got {value!r}")
    if meta.get("check") is not None:
        meta["check"](key, value)
