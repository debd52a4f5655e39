"""tlcore.fit: the run `tlcore run` makes, from Python; and examples/train_from_python.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tlcore
from tlcore import api, plugins
from tlcore.config import build_config
from tlcore.errors import ConfigError, UnknownNameError
from tlcore.testing import TinyPlugin
from tlcore.train import RunResult

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    backbone="tlcore.testing:tiny", dataset="tlcore.testing:shapes", weights="none", batch_size=8, callbacks="-progress"
)


def test_fit_returns_the_run_and_writes_its_folder(host, tmp_path):
    result = api.fit(**TINY, epochs=2, lr=0.01, output=str(tmp_path / "run"))
    assert isinstance(result, RunResult)
    assert result.output_dir == tmp_path / "run"
    assert [m["epoch"] for m in result.history] == [1, 2]
    assert result.config == build_config(overrides={**TINY, "epochs": 2, "lr": 0.01, "output": str(tmp_path / "run")})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["val_acc"] for line in lines] == [m["val_acc"] for m in result.history]


def test_fit_options_are_checked_like_the_command_line(host, tmp_path):
    with pytest.raises(ConfigError) as from_fit:
        api.fit(**TINY, batch_sise=8)
    with pytest.raises(ConfigError) as from_build:
        build_config(overrides={"batch_sise": 8})
    assert str(from_fit.value) == str(from_build.value) == "unknown config key 'batch_sise'; did you mean batch_size?"
    with pytest.raises(ConfigError, match="option epochs must be int, got 'two'"):
        api.fit(**TINY, epochs="two")
    with pytest.raises(UnknownNameError, match="unknown backbone 'tlcore.testing:tiyn'"):
        api.fit(**{**TINY, "backbone": "tlcore.testing:tiyn"}, output=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_config_file_then_keywords_and_an_explicit_host(tmp_path):
    fresh = plugins.PluginHost(load_installed=False)  # not the process-wide host: only `host=` makes it used
    fresh.register(TinyPlugin(), "tiny")
    config = tmp_path / "run.toml"
    config.write_text(
        'backbone = "tlcore.testing:tiny"\ndataset = "tlcore.testing:shapes"\nweights = "none"\nepochs = 3\nbatch_size = 8\n'
    )
    result = api.fit(config_file=config, host=fresh, epochs=1, output=str(tmp_path / "run"), callbacks="-progress")
    assert result.config.epochs == 1 and result.config.batch_size == 8 and len(result.history) == 1


def test_fit_is_exported_from_tlcore():
    assert tlcore.fit is api.fit
    assert "fit" in tlcore.__all__


def test_train_from_python_script(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_DISABLE}
    env.update(TLCORE_PLUGINS="", OMP_NUM_THREADS="1")  # it needs no installed plugin; one thread avoids thrashing
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train_from_python.py"), "--epochs", "2", "--output", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    history = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads(lines["recorded"]) == [m["val_acc"] for m in history]
    best = max(history, key=lambda m: m["val_acc"])
    assert lines["best"] == f"epoch {best['epoch']}, val_acc {best['val_acc']:.3f}"
    assert lines["folder"] == str(tmp_path / "r")
    assert {"best.safetensors", "config.json", "last.safetensors", "metrics.jsonl"} <= set(lines["files"].split(", "))
    assert lines["afterwards"].startswith("unknown dataset 'code:colours'")
    assert "epoch 2/2" in done.stderr  # the default progress callback still ran beside the script's own
