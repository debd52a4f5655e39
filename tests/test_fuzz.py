"""Property-based fuzzing (hypothesis) of everything a user or a file can hand to tlcore.

The property is always the same: bad input is a :class:`tlcore.errors.TlcoreError`
(for the command line: exit status 0, 1 or 2 and no traceback), never another
exception. Targets:

- TOML config files with random keys and values, through ``load_config_file``
  and ``build_config``;
- option values of ``tlcore run`` through ``tlcore.cli.main`` in-process, on the
  tiny plugin; the output folder already holds a file, so a run whose options
  all pass is stopped by ``create_output_dir`` after the dataset, backbone,
  head, freeze policy, optimizer and schedule were built, and never trains
  (a few valid runs with one epoch check the success path);
- malformed CIFAR files (random bytes, truncated pickles, pickles of wrong
  shapes and types) through the datasets plugin, which must raise DataError;
- malformed checkpoints (random bytes, truncated safetensors, random or broken
  tlcore metadata) through ``read_checkpoint``, ``read_weights_file`` and
  ``load_train_state``.

Every crash this module found was fixed in the core; the tests at the end
reproduce each one and now hold the fix. Examples are derandomized, so CI sees the same inputs every time;
set ``TLCORE_FUZZ_SCALE=10`` (say) to try ten times as many, from a random seed.
``pytest -s tests/test_fuzz.py`` prints how many inputs each target tried.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from tlcore import cli
from tlcore.checkpoint import CheckpointInfo, read_checkpoint
from tlcore.config import AUGMENTS, BN_MODES, FIELDS, OPTIMIZERS, SCHEDULES, build_config, load_config_file, option_kind
from tlcore.errors import DataError, TlcoreError
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.testing import tiny_module, write_cifar10
from tlcore.weights import read_weights_file

SCALE = float(os.environ.get("TLCORE_FUZZ_SCALE", "1"))
TRIED: Counter = Counter()  # inputs tried per target
ACCEPTED: Counter = Counter()  # inputs that loaded or ran without error, per target


def fuzz_settings(examples: int):
    """max_examples scaled by TLCORE_FUZZ_SCALE; no deadline (the machine is shared); no example database."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    """After the module: how many inputs each target tried (visible with pytest -s), for the documentation."""
    yield
    for target, count in TRIED.items():
        if target == "malformed checkpoint files":  # each file is read three ways: counted below as reads
            print(f"\nfuzz {target}: {count} files tried")
            continue
        errors = count - ACCEPTED[target]
        print(f"\nfuzz {target}: {count} inputs tried: {ACCEPTED[target]} accepted, {errors} clean errors")


# -- (a) TOML config files -------------------------------------------------------------------------

KEY = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=12), st.sampled_from(["run", "Epochs", ""]))
SCALAR = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["cosine", "sgd", "none", "backbone", "mlp", "tlcore.testing:tiny", "cpu", "auto", "1,2", "+progress"]),
)
TOML_VALUE = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY, inner, max_size=3), max_leaves=6
)


def toml_key(key: str) -> str:
    return json.dumps(key)  # a quoted key is always valid TOML


def toml_value(value) -> str:
    """TOML text for a value (strings as JSON strings, which TOML basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@fuzz_settings(400)
@given(
    values=st.one_of(
        st.dictionaries(KEY, TOML_VALUE, max_size=6), st.dictionaries(st.sampled_from(sorted(FIELDS)), SCALAR, max_size=4)
    ),
    table=st.booleans(),
    junk=st.sampled_from(["", "\n[x", "=", "\x00"]),
)
def test_toml_config_files_are_accepted_or_a_config_error(tmp_path, values, table, junk):
    TRIED["TOML config files"] += 1
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items()]
    text = ("[run]\n" if table else "") + "\n".join(lines) + "\n" + junk
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        build_config(load_config_file(path))
        ACCEPTED["TOML config files"] += 1
    except TlcoreError:
        pass


@fuzz_settings(100)
@given(content=st.binary(max_size=200))
def test_config_files_of_random_bytes(tmp_path, content):
    TRIED["config files of random bytes"] += 1
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    try:
        build_config(load_config_file(path))
        ACCEPTED["config files of random bytes"] += 1
    except TlcoreError:
        pass


# -- (b) command-line values of `tlcore run` -------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=16)
CHOICES = {
    "backbone": ["tlcore.testing:tiny", "tlcore.testing:tiyn", "torchvision:resnet18", "tiny"],
    "dataset": ["tlcore.testing:shapes", "cifar10", "digits"],
    "weights": ["none", "pretrained", "missing.pth", "."],
    "head": ["linear", "mlp", "cosine"],
    "freeze": ["none", "backbone", "partial", "gradual", "norm", "bogus"],
    "freeze_to": ["stem", "stage1", "stage2", "1", "2", "9", "-1", "head"],
    "optimizer": [*OPTIMIZERS, "adam"],
    "schedule": [*SCHEDULES, "linear"],
    "augment": [*AUGMENTS, "heavy"],
    "bn_mode": [*BN_MODES, "eval"],
    "device": ["auto", "cpu", "cuda", "cuda:1", "mps", "tpu", "cpu:0", "cpu:x", "cuda:-1", "cpu:"],
    "lr_mults": ["stem=0.1,head=1", "stage9=1", "stem=x", "=", "stem=-1"],
    "class_weights": ["auto", "1,2", "1", "a,b", "-1,1", "0,0", "nan,1"],
    "callbacks": ["-progress", "+early_stopping", "bogus", "+bogus", "-metrics,-checkpoint"],
}
FORCED = {"output", "config"}  # the output folder is forced; config files have their own fuzzer
NUMBER_TEXT = st.one_of(
    st.integers(-3, 70).map(str),
    st.sampled_from(["2147483648", "9223372036854775808", "-9223372036854775809", "1" + "0" * 30, "0x10", "1_000"]),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "1e-400", "", " 3", "3.", ".5"]),
)


@st.composite
def option_values(draw):
    """A list of ``--option value`` arguments for random options of ``tlcore run``."""
    args: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(set(FIELDS) - FORCED)), max_size=5, unique=True)):
        flag = "--" + name.replace("_", "-")
        kind = option_kind(name)
        if kind is bool:
            args.append(draw(st.sampled_from([flag, "--no-" + flag[2:]])))
            continue
        if name == "head_hidden":  # the head is built at once: a huge width tries to allocate it (no upper bound)
            value = draw(st.one_of(st.integers(-3, 64).map(str), TEXT))
        elif name in CHOICES:
            value = draw(st.one_of(st.sampled_from(CHOICES[name]), TEXT))
        elif kind in (int, float):
            value = draw(st.one_of(NUMBER_TEXT, TEXT))
        else:
            value = draw(TEXT)
        args += [flag, value]
    return args


TINY = ["--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes", "--weights", "none"]
TINY += ["--batch-size", "8", "--epochs", "1"]


def call_cli(argv: list[str]) -> tuple[int, str]:
    """``tlcore ARGV`` in-process: (exit code, stderr); other exceptions propagate."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return code, err.getvalue()


@fuzz_settings(150)
@given(args=option_values())
def test_run_options_exit_cleanly(host, tmp_path, args):
    TRIED["tlcore run options"] += 1
    occupied = tmp_path / "occupied"
    occupied.mkdir(exist_ok=True)
    (occupied / "keep").touch()
    argv = ["run", *TINY, *args, "--output", str(occupied)]
    code, err = call_cli(argv)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2 and err.strip().splitlines()[-1:] != [] and not err.lstrip().startswith("Usage:"):
        assert err.strip().splitlines()[-1].startswith(("tlcore: error: ", "Error:", "Try ")), (argv, err)
    assert sorted(p.name for p in occupied.iterdir()) == ["keep"]  # nothing was overwritten
    if "already exists and is not empty" in err:  # every option passed and everything was built
        ACCEPTED["tlcore run options"] += 1


VALID = st.fixed_dictionaries(
    {
        "--optimizer": st.sampled_from(OPTIMIZERS),
        "--schedule": st.sampled_from(SCHEDULES),
        "--augment": st.sampled_from(AUGMENTS),
        "--bn-mode": st.sampled_from(BN_MODES),
        "--head": st.sampled_from(["linear", "mlp"]),
        "--freeze": st.sampled_from(["none", "backbone", "gradual"]),
        "--lr": st.floats(1e-5, 1.0).map(repr),
        "--label-smoothing": st.floats(0.0, 0.5).map(repr),
        "--seed": st.integers(0, 2**32).map(str),
        "--head-hidden": st.integers(1, 16).map(str),
        "--batch-size": st.integers(4, 40).map(str),
        "--image-size": st.integers(8, 24).map(str),
    }
)


@fuzz_settings(6)
@given(options=VALID)
def test_valid_run_options_train_one_epoch(host, tmp_path_factory, options):
    TRIED["valid tlcore run options"] += 1
    out = tmp_path_factory.mktemp("valid") / "run"
    args = [item for pair in options.items() for item in pair]
    code, err = call_cli(["run", *TINY, *args, "--callbacks=-progress", "--output", str(out)])
    assert code == 0, (args, err)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    ACCEPTED["valid tlcore run options"] += 1


# -- (c) malformed CIFAR files ------------------------------------------------------------------------

CIFAR_FILES = ["data_batch_1", "data_batch_4", "test_batch", "batches.meta"]
ARRAY = st.builds(
    lambda dtype, shape, fill: np.full(shape, fill).astype(dtype),
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.int8, object]),
    st.one_of(st.tuples(st.integers(0, 3)), st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 3072, 3073]))),
    st.integers(-1, 300),
)
LEAF = st.one_of(
    ARRAY,
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.lists(st.integers(-2, 12), max_size=5),
)
PICKLED = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from([b"data", "data"]), inner),
    max_leaves=5,
)
CIFAR_CONTENT = st.one_of(
    st.dictionaries(
        st.sampled_from([b"data", "data", b"labels", "labels", b"label_names", "label_names", b"other"]), PICKLED, max_size=4
    ),
    PICKLED,
)


@st.composite
def malformed_cifar(draw):
    """(file to replace, how): random bytes, a valid file truncated, or a pickle of random content."""
    file = draw(st.sampled_from(CIFAR_FILES))
    how = draw(st.sampled_from(["bytes", "truncated", "content"]))
    if how == "bytes":
        return file, how, draw(st.binary(max_size=300))
    if how == "truncated":
        return file, how, draw(st.floats(0.0, 0.999))
    return file, how, (draw(CIFAR_CONTENT), draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))


@fuzz_settings(250)
@given(case=malformed_cifar())
def test_malformed_cifar_files_are_a_data_error(tmp_path_factory, case):
    cifar = pytest.importorskip("tlcore_datasets.cifar")
    from tlcore.dataset import DatasetOptions

    TRIED["malformed CIFAR files"] += 1
    root = write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_batch=2, test_images=2)
    file, how, what = case
    path = root / "cifar-10-batches-py" / file
    if how == "bytes":
        path.write_bytes(what)
    elif how == "truncated":
        content = path.read_bytes()
        path.write_bytes(content[: int(len(content) * what)])
    else:
        path.write_bytes(pickle.dumps(what[0], protocol=what[1]))
    try:
        cifar.load_cifar10("cifar10", DatasetOptions(data_dir=str(root), download=False))
        ACCEPTED["malformed CIFAR files"] += 1  # e.g. a meta file with extra entries, or a batch cut after its end
    except DataError:
        pass


# -- (d) malformed checkpoints and training states ----------------------------------------------------


def checkpoint_bytes() -> bytes:
    info = CheckpointInfo("tlcore.testing:tiny", ["a", "b"], "linear", {}, {}, 16, 1, {"val_acc": 1.0}, "none")
    return save(
        {f"backbone.{k}": v.contiguous() for k, v in tiny_module().state_dict().items()}, metadata=info.to_metadata()
    )


CHECKPOINT = checkpoint_bytes()
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
TLCORE_RECORD = st.one_of(
    JSON_VALUE.map(json.dumps),
    st.text(max_size=30),
    st.fixed_dictionaries(
        {"format": st.sampled_from(["tlcore-checkpoint", "tlcore-train-state", "x"])},
        optional={
            "format_version": st.one_of(st.integers(-1, 3), st.text(max_size=3), st.none()),
            "backbone": JSON_VALUE,
            "classes": JSON_VALUE,
            "epoch": JSON_VALUE,
        },
    ).map(json.dumps),
)


@st.composite
def malformed_checkpoint(draw):
    """Bytes of a file that is not a sound checkpoint."""
    how = draw(st.sampled_from(["bytes", "truncated", "flipped", "metadata", "header"]))
    if how == "bytes":
        return how, draw(st.binary(max_size=300))
    if how == "truncated":
        return how, CHECKPOINT[: draw(st.integers(0, len(CHECKPOINT) - 1))]
    if how == "flipped":  # one byte of the header changed
        (length,) = struct.unpack("<Q", CHECKPOINT[:8])
        index = draw(st.integers(0, 8 + length - 1))
        return how, CHECKPOINT[:index] + bytes([draw(st.integers(0, 255))]) + CHECKPOINT[index + 1 :]
    if how == "header":  # a hand-written header of random JSON
        header = json.dumps(draw(st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=3))).encode()
        return how, struct.pack("<Q", len(header)) + header + draw(st.binary(max_size=16))
    metadata = draw(st.dictionaries(st.sampled_from(["tlcore", "tlcore_train_state", "format", "x"]), TLCORE_RECORD))
    return how, save({"backbone.w": torch.zeros(2)}, metadata=metadata)


@fuzz_settings(300)
@given(case=malformed_checkpoint(), suffix=st.sampled_from([".safetensors", ".pt"]))
def test_malformed_checkpoints_are_a_tlcore_error(tmp_path_factory, case, suffix):
    how, content = case
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / f"best{suffix}"
    path.write_bytes(content)
    (folder / STATE_FILE).write_bytes(content)
    TRIED["malformed checkpoint files"] += 1
    for read in (read_weights_file, read_checkpoint, lambda _: load_train_state(folder)):
        TRIED["malformed checkpoints (reads)"] += 1
        try:
            read(path)
            ACCEPTED["malformed checkpoints (reads)"] += 1
        except TlcoreError:
            pass


# -- the crashes found, reproduced: each is now a TlcoreError ----------------------------------------


def test_crash_toml_integer_beyond_float_range(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("lr = 1" + "0" * 400 + "\n")
    with pytest.raises(TlcoreError):
        build_config(load_config_file(path))


@pytest.mark.parametrize("option", [["--device", "cpu:abc"], ["--warmup-epochs", "inf"], ["--warmup-epochs", "nan"]])
def test_crash_cli_values(host, tmp_path, option):
    code, err = call_cli(["run", *TINY, *option, "--output", str(tmp_path / "run")])
    assert code == 2 and err.startswith("tlcore: error: ")
