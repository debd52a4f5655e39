"""train_state.safetensors on --resume and TOML configs: valid files of the wrong shape are one clear error.

A real state is written by a one-epoch tiny run, then one field of its
record is damaged; every damage must be refused by ``load_train_state``
(ConfigError naming the field) and reach ``tlcore run --resume`` as one line.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tlcore import cli
from tlcore.config import MAX_TOML_NESTING, load_config_file
from tlcore.errors import ConfigError
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.train import fit


def write_state(folder, tensors, record):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / STATE_FILE), metadata={"tlcore_train_state": json.dumps(record)})
    return folder


_SAVED: dict = {}


@pytest.fixture
def state(host, tiny_config):
    """A real state file's tensors and record, from a two-epoch run of the tiny model (run once per module)."""
    if not _SAVED:
        result = fit(tiny_config(epochs=2, callbacks="-progress"), host)
        with safe_open(str(result.output_dir / STATE_FILE), framework="pt") as handle:
            _SAVED["tensors"] = {key: handle.get_tensor(key) for key in handle.keys()}
            _SAVED["record"] = json.loads(handle.metadata()["tlcore_train_state"])
    return _SAVED["tensors"], json.loads(json.dumps(_SAVED["record"]))


def damage(record: dict, path: str, value) -> dict:
    *parents, key = path.split(".")
    copy = json.loads(json.dumps(record))
    target = copy
    for parent in parents:
        target = target[int(parent)] if isinstance(target, list) else target[parent]
    if isinstance(target, list):
        target[int(key)] = value
    else:
        target[key] = value
    return copy


DAMAGE = {
    "epoch a string": ("epoch", "1", "epoch must be a non-negative integer, got '1'"),
    "epoch a float": ("epoch", 1.5, "epoch must be a non-negative integer, got 1.5"),
    "epoch negative": ("epoch", -1, "epoch must be a non-negative integer"),
    "epoch true": ("epoch", True, "epoch must be a non-negative integer"),
    "step a string": ("step", "3", "step must be a non-negative integer"),
    "history a dict": ("history", {}, "history must be a list"),
    "history of numbers": ("history", [1, 2], "history entry 1 must be an object with epoch 1"),
    "history too short": ("history", [], "history holds 0 epochs but the state is at epoch 2"),
    "history epoch wrong": ("history.1.epoch", 7, "history entry 2 must be an object with epoch 2"),
    "history val_acc a string": ("history.0.val_acc", "x", "history entry 1: val_acc must be a number"),
    "config a string": ("config", "x", "config must be an object"),
    "callbacks not objects": ("callbacks", {"checkpoint": 3}, "callbacks must map"),
    "optimizer without groups": ("optimizer", {"state": {}}, "optimizer must hold a list of param_groups"),
    "rng python short": ("rng.python", [3], "rng.python must be"),
    "rng numpy a string": ("rng.numpy", "MT19937", "rng.numpy must be"),
}


@pytest.mark.parametrize("case", DAMAGE.values(), ids=DAMAGE.keys())
def test_each_damaged_field_is_named(state, tmp_path, case):
    tensors, record = state
    field, value, message = case
    folder = write_state(tmp_path / "run", tensors, damage(record, field, value))
    with pytest.raises(ConfigError, match=f"damaged training state \\({message}"):
        load_train_state(folder)


def test_the_undamaged_state_loads(state, tmp_path):
    tensors, record = state
    assert load_train_state(write_state(tmp_path / "run", tensors, record)).record["epoch"] == 2


@pytest.mark.parametrize("case", [DAMAGE["epoch a string"], DAMAGE["epoch a float"], DAMAGE["history of numbers"]])
def test_resume_gives_one_line_exit_2(host, state, tmp_path, capsys, case):
    tensors, record = state
    field, value, _ = case
    record = damage(record, field, value)
    record["config"]["epochs"] = 3  # something left to do
    folder = write_state(tmp_path / "run", tensors, record)
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--resume", str(folder)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tlcore: error: ")]
    assert stop.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "damaged training state" in errors[0]


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a=", "}")], ids=["arrays", "inline tables"])
def test_toml_nested_thousands_deep_is_a_config_error(tmp_path, opening, closing):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + opening * 5000 + "1" + closing * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"nests arrays or tables 5000 deep; accepted: at most {MAX_TOML_NESTING}"):
        load_config_file(path)


def test_toml_of_ordinary_depth_still_loads(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('callbacks = ["-progress"]\nepochs = 2\n')
    assert load_config_file(path) == {"callbacks": ["-progress"], "epochs": 2}
