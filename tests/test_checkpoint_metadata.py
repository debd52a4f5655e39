"""Checkpoint metadata is validated as a schema, in one place, before any reader uses a field.

Every reader (``run --weights``, ``eval``, ``predict``, ``export`` and
``tlcore.load_checkpoint``) gets one ``tlcore: error:`` line, exit 2, for a
damaged field; a fuzz pass over records of every JSON shape ends with no
exception other than tlcore's own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from tlcore import cli
from tlcore.checkpoint import CheckpointInfo, read_checkpoint
from tlcore.errors import TlcoreError, WeightsError
from tlcore.heads import HeadOptions, linear_head
from tlcore.inference import load_checkpoint
from tlcore.model import Classifier
from tlcore.testing import TINY_BACKBONE, TINY_DATASET, tiny_backbone


def good_record() -> dict:
    """The metadata a run writes for the tiny backbone and dataset."""
    backbone = tiny_backbone()
    info = CheckpointInfo(
        backbone=TINY_BACKBONE,
        classes=["top_left", "bottom_right"],
        head="linear",
        head_options={"hidden": 512, "dropout": 0.0},
        preprocessing=backbone.preprocessing.to_dict(),
        image_size=16,
        epoch=1,
        metrics={"val_acc": 0.5},
        weights="none",
        data={"dataset": TINY_DATASET, "data_dir": None, "seed": 0, "val_fraction": 0.2},
    )
    return json.loads(info.to_metadata()["tlcore"])


TENSORS = None


def tensors() -> dict[str, torch.Tensor]:
    """The state dict of a classifier the good record describes (built once)."""
    global TENSORS
    if TENSORS is None:
        torch.manual_seed(0)
        model = Classifier(tiny_backbone().module, linear_head(16, 2, HeadOptions()))
        TENSORS = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return TENSORS


def write(path: Path, record: object) -> Path:
    """A checkpoint file with real tensors and ``record`` as its tlcore metadata (JSON-encoded)."""
    path.write_bytes(save(tensors(), metadata={"tlcore": json.dumps(record), "format": "pt"}))
    return path


def damaged(path: Path, *keys_and_value) -> Path:
    """The good record with the field at ``keys`` (a path into nested objects) set to ``value``."""
    *keys, value = keys_and_value
    record = good_record()
    target = record
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return write(path, record)


# each case: a field and a value that crashed a reader, or would have been used wrongly, before the schema
DAMAGE = {
    "crop_pct zero": ("preprocessing", "crop_pct", 0),
    "crop_pct negative": ("preprocessing", "crop_pct", -0.5),
    "crop_pct above one": ("preprocessing", "crop_pct", 3),
    "crop_pct tiny": ("preprocessing", "crop_pct", 1e-300),
    "mean strings": ("preprocessing", "mean", ["a", "b", "c"]),
    "mean two values": ("preprocessing", "mean", [0.5, 0.5]),
    "std zero": ("preprocessing", "std", [0.5, 0.0, 0.5]),
    "std not finite": ("preprocessing", "std", [0.5, 1e400, 0.5]),
    "input_size zero": ("preprocessing", "input_size", 0),
    "interpolation unknown": ("preprocessing", "interpolation", "lanczos9"),
    "fixed_size a string": ("preprocessing", "fixed_size", "yes"),
    "image_size zero": ("image_size", 0),
    "image_size huge": ("image_size", 10**9),
    "image_size float": ("image_size", 16.5),
    "image_size true": ("image_size", True),
    "classes empty": ("classes", []),
    "classes numbers": ("classes", [1, 2]),
    "classes twice": ("classes", ["a", "a"]),
    "head_options hidden string": ("head_options", "hidden", "512"),
    "head_options dropout one": ("head_options", "dropout", 1.0),
    "backbone a number": ("backbone", 7),
    "head empty": ("head", ""),
    "epoch a string": ("epoch", "1"),
    "metrics a list": ("metrics", [1]),
    "data a string": ("data", "here"),
    "data seed negative": ("data", "seed", -1),
    "data val_fraction one": ("data", "val_fraction", 1.0),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_every_damaged_field_is_a_weights_error_naming_it(host, tmp_path, damage):
    path = damaged(tmp_path / "bad.safetensors", *damage)
    field = ".".join(str(k) for k in damage[:-1] if k not in ("hidden", "dropout", "seed", "val_fraction"))
    with pytest.raises(WeightsError, match=f"damaged tlcore checkpoint: {field}"):
        read_checkpoint(path)
    with pytest.raises(WeightsError, match=field):
        load_checkpoint(path, "cpu", host)


def test_the_good_record_loads(host, tmp_path):
    predictor = load_checkpoint(write(tmp_path / "good.safetensors", good_record()), "cpu", host)
    assert predictor.classes == ["top_left", "bottom_right"]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("damage", [DAMAGE["crop_pct zero"], DAMAGE["mean strings"], DAMAGE["image_size zero"]])
def test_every_command_gives_one_line_exit_2(host, tmp_path, capsys, damage):
    path = damaged(tmp_path / "bad.safetensors", *damage)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    commands = [
        ["predict", str(image), "--checkpoint", str(path)],
        ["eval", "--checkpoint", str(path), "--device", "cpu"],
        ["export", "--checkpoint", str(path), "--format", "torchscript"],
        ["run", "--backbone", TINY_BACKBONE, "--dataset", TINY_DATASET, "--weights", str(path), "--epochs", "1",
         "--output", str(tmp_path / "run")],
    ]
    for args in commands:
        code, err = run_cli(args, capsys)
        assert code == 2, args
        errors = [line for line in err.splitlines() if line.startswith("tlcore: error: ")]
        assert len(errors) == 1 and "Traceback" not in err, (args, err)
        assert "damaged tlcore checkpoint" in errors[0]
    assert not (tmp_path / "run").exists()


# -- fuzz: records of every JSON shape, alone and in place of each field ------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = list(good_record()) + [f"preprocessing.{k}" for k in good_record()["preprocessing"]] + [
    "head_options.hidden",
    "head_options.dropout",
    "data.seed",
    "data.val_fraction",
]


@st.composite
def records(draw) -> object:
    """A whole random JSON value, or the good record with one to three fields replaced (or removed)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON)
    record = good_record()
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        *parents, key = name.split(".")
        target = record
        for parent in parents:
            target = target.get(parent) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if draw(st.booleans()) and draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(JSON)
    return record


FUZZED = {"examples": 0, "accepted": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(record=records())
def test_fuzzed_metadata_raises_only_tlcore_errors(host, tmp_path_factory, record):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.safetensors"
    try:
        path.write_bytes(save(tensors(), metadata={"tlcore": json.dumps(record), "format": "pt"}))
    except ValueError:  # NaN/inf or an integer JSON cannot hold: write what Python's json writes
        path.write_bytes(save(tensors(), metadata={"tlcore": json.dumps(record, allow_nan=True)}))
    FUZZED["examples"] += 1
    try:
        predictor = load_checkpoint(path, "cpu", host)
        result = predictor.predict(torch.zeros(3, 9, 7, dtype=torch.uint8), top_k=1)
    except TlcoreError:
        return
    FUZZED["accepted"] += 1
    assert math.isfinite(result[0].probability)


@pytest.fixture(autouse=True, scope="module")
def _report_counts():
    """With ``pytest -s``: how many fuzzed records were tried and how many loaded and predicted."""
    yield
    if FUZZED["examples"]:
        print(f"\ncheckpoint metadata fuzz: {FUZZED['examples']} records, {FUZZED['accepted']} accepted")
