"""YAML config files beside TOML: the same keys, the same checks, the same one-line errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlcore.config import MAX_TOML_NESTING, build_config, load_config_file
from tlcore.errors import ConfigError

TOML = """backbone = "tlcore.testing:tiny"
dataset = "tlcore.testing:shapes"
weights = "none"
epochs = 2
batch_size = 8
lr = 1e-3
weight_decay = 0.0
channels_last = "off"
amp = false
callbacks = ["-progress", "+csv"]
freeze_to = 2
"""

YAML = """backbone: tlcore.testing:tiny
dataset: "tlcore.testing:shapes"
weights: none
epochs: 2
batch_size: 8
lr: 1e-3            # YAML 1.1 would read this as text
weight_decay: 0.0
channels_last: off  # YAML 1.1 would read this as false
amp: false
callbacks: [-progress, +csv]
freeze_to: 2
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_yaml_gives_the_same_config_as_toml(tmp_path, suffix):
    (tmp_path / "run.toml").write_text(TOML)
    (tmp_path / f"run{suffix}").write_text(YAML)
    from_toml = load_config_file(tmp_path / "run.toml")
    from_yaml = load_config_file(tmp_path / f"run{suffix}")
    assert from_yaml == from_toml
    assert build_config(from_yaml) == build_config(from_toml)


def test_a_run_table_and_an_empty_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run:\n  epochs: 4\n  optimizer: sgd\n")
    assert load_config_file(path) == {"epochs": 4, "optimizer": "sgd"}
    path.write_text("# nothing set\n")
    assert load_config_file(path) == {}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("- epochs\n- 3\n", "must hold a mapping of option names to values at the top level, got a list"),
        ("just words\n", "must hold a mapping of option names to values at the top level, got a str"),
        ("epochs: 2\nepochs: 3\n", "is not valid YAML: key 'epochs' is given twice (line 2)"),
        ("epochs: [1\n", "is not valid YAML:"),
        ("optim:\n  lr: 1\n", "[optim] mappings are not accepted; use top-level keys"),
        ("1: 2\n", "option names are text, got 1"),
        ("a: &x [1, 2]\nb: *x\n", "YAML anchors and aliases are not accepted"),
        ("epochs: 2\n---\nepochs: 3\n", "holds 2 YAML documents; accepted: one"),
        ("x: " + "[" * (MAX_TOML_NESTING + 1) + "]" * (MAX_TOML_NESTING + 1) + "\n", f"more than {MAX_TOML_NESTING} deep"),
        ("x: !!python/object:os.system ls\n", "is not valid YAML:"),  # the safe loader builds no objects
        ("seed: 2001-13-14\n", "is not valid YAML: month must be in 1..12"),  # constructors raise ValueError
        ("x: !!float abc\n", "is not valid YAML: could not convert string to float"),
        ("x: !!int 0x\n", "is not valid YAML:"),
    ],
)
def test_bad_yaml_is_one_config_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and str(path) in message


def test_very_deep_yaml_is_refused_before_it_is_built(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("x: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="deep"):
        load_config_file(path)


def test_yaml_values_are_checked_like_toml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; did you mean epochs"):
        build_config(load_config_file(path))
    path.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match="option epochs must be int"):
        build_config(load_config_file(path))
    path.write_text("amp: yes\n")  # a word, not a boolean, in YAML 1.2
    with pytest.raises(ConfigError, match="option amp must be bool"):
        build_config(load_config_file(path))


def test_run_with_a_yaml_config_and_its_errors_on_the_command_line(tlcore_cli, tmp_path):
    path = tmp_path / "run.yml"
    path.write_text(YAML.replace("+csv", "+metrics").replace("epochs: 2", "epochs: 3"))
    code, _, err = tlcore_cli("run", "--config", path, "--epochs", "1", "--device", "cpu", "--output", tmp_path / "r")
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["lr"] == 1e-3 and saved["channels_last"] == "off"
    path.write_text("epochs: 2\nepochs: 3\n")
    code, _, err = tlcore_cli("run", "--config", path, "--output", tmp_path / "r2")
    assert code == 2 and err.count("\n") == 1 and err.startswith("tlcore: error: config file ")
    assert "key 'epochs' is given twice" in err and not (tmp_path / "r2").exists()


YAML_PIECES = ["epochs: 2\n", "a: [", "]", "{", "}", "&x ", "*x", "!!python/name:os.system ", "- ", ": ", "'", '"',
               "\t", "\n", "run:\n  ", "? ", "%YAML 1.1\n", "---\n", "...\n", "1e3", "yes", "~", "\x00", "\ufeff",
               "!!float ", "!!int ", "!!binary ", "2001-13-14", "!!timestamp ", "0x", "=", "<<: "]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=6)), max_size=30))
def test_any_yaml_text_is_options_or_one_config_error(tmp_path, pieces):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes("".join(pieces).encode("utf-8", "surrogatepass"))
    try:
        values = load_config_file(path)
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(values, dict) and all(isinstance(key, str) for key in values)
    assert not any(isinstance(value, dict) for value in values.values())
