"""tlcore-wandb in W&B's offline mode (nothing leaves the machine), and the exact calls it makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import tlcore_wandb

from tlcore.errors import ConfigError

wandb = pytest.importorskip("wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch, tlcore_register):
    """W&B offline, every file it writes under tmp_path; the plugin registered."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were anything sent, it would go nowhere
    tlcore_register(tlcore_wandb, "wandb")
    return tmp_path / "WANDB_DIR"


def test_an_offline_run_records_config_metrics_and_artifacts_locally(offline, tlcore_run):
    result = tlcore_run(epochs=2, callbacks="-progress,+wandb")
    wandb.teardown()  # W&B's service process writes the run's log asynchronously: wait until it is done
    runs = sorted((offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()  # W&B's transaction log of the run
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    for needle in ("tlcore.testing:tiny", result.output_dir.name, "val_acc", "train_loss", repr(lines[-1]["val_acc"])):
        assert needle.encode() in records, needle
    for artifact in (f"{result.output_dir.name}-model", f"{result.output_dir.name}-report", "best.safetensors",
                     "README.md", "metrics.jsonl"):
        assert artifact.encode() in records, artifact


class FakeRun:
    def __init__(self, **options):
        self.options, self.id, self.logged, self.artifacts, self.finished = options, "abc123", [], [], None

    def define_metric(self, *args, **options):
        pass

    def log(self, values):
        self.logged.append(values)

    def log_artifact(self, artifact):
        self.artifacts.append(artifact)

    def finish(self, exit_code=0):
        self.finished = exit_code


class FakeArtifact:
    def __init__(self, name, type, metadata=None):
        self.name, self.type, self.files = name, type, []

    def add_file(self, path, name=None):
        self.files.append(name)


@pytest.fixture
def fake_wandb(monkeypatch, tlcore_register):
    runs = []

    def init(**options):
        runs.append(FakeRun(**options))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init, Artifact=FakeArtifact))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    tlcore_register(tlcore_wandb, "wandb")
    return runs


def test_the_calls_config_per_epoch_metrics_artifacts_and_finish(fake_wandb, tlcore_run):
    result = tlcore_run(epochs=2, callbacks="-progress,+wandb")
    (run,) = fake_wandb
    assert run.options["project"] == "tlcore" and run.options["name"] == result.output_dir.name
    assert "mode" not in run.options and "entity" not in run.options  # left to W&B's own variables
    assert run.options["config"]["epochs"] == 2
    assert run.options["config"]["resolved"]["classes"] == ["top_left", "bottom_right"]
    assert [values["epoch"] for values in run.logged] == [1, 2]
    assert all(isinstance(value, (int, float)) for values in run.logged for value in values.values())
    assert {a.type: a.files for a in run.artifacts} == {
        "model": ["best.safetensors", "README.md"], "report": ["config.json", "metrics.jsonl"]
    }
    assert run.finished == 0


def test_settings_from_plugin_options_and_variables(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    logger = tlcore_wandb.make_logger(SimpleNamespace(plugin_options={"wandb_mode": "offline", "wandb_run_name": "n"}))
    assert (logger.project, logger.mode, logger.run_name) == ("from-env", "offline", "n")
    with pytest.raises(ConfigError, match="wandb_mode 'sometimes' is not accepted; accepted: online, offline, disabled"):
        tlcore_wandb.make_logger(SimpleNamespace(plugin_options={"wandb_mode": "sometimes"}))


def test_a_wandb_failure_at_start_is_one_line(monkeypatch, tlcore_register, tlcore_run, tmp_path):
    def init(**options):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init))
    tlcore_register(tlcore_wandb, "wandb")
    with pytest.raises(tlcore_wandb.TrackerError) as caught:
        tlcore_run(callbacks="-progress,+wandb")
    assert str(caught.value) == (
        "wandb could not start the run: RuntimeError: api_key not configured (no-tty). call wandb.login(key=[your_api_key])"
    )


def test_a_resumed_run_passes_its_id_and_skips_logged_epochs(fake_wandb):
    logger = tlcore_wandb.make_logger(SimpleNamespace())
    logger.load_state_dict({"run_id": "abc123"})
    run = SimpleNamespace(
        output_dir=Path("/tmp/r"), history=[{"epoch": 1}], config=SimpleNamespace(to_dict=lambda: {}), image_size=8,
        classes=["a"], backbone=SimpleNamespace(weights="none"), device="cpu", steps_per_epoch=1,
    )
    logger.on_fit_start(run)
    logger.on_epoch_end(run, {"epoch": 1, "val_acc": 0.5})
    logger.on_epoch_end(run, {"epoch": 2, "val_acc": 0.7})
    logger.on_exception(run, KeyboardInterrupt())
    logger.on_fit_end(run)
    (started,) = fake_wandb
    assert started.options["id"] == "abc123" and started.options["resume"] == "allow"
    assert started.logged == [{"epoch": 2, "val_acc": 0.7}] and started.finished == 1


@pytest.mark.parametrize("state", [{"run_id": "a/b"}, {"run_id": None}, "x"])
def test_a_damaged_saved_run_id_is_ignored(state):
    logger = tlcore_wandb.make_logger(SimpleNamespace())
    logger.load_state_dict(state)
    assert logger.run_id is None


def test_tracker_settings_are_not_in_the_wandb_config():
    options = {"mlflow_tracking_uri": "http://user:secret@host", "wandb_entity": "me", "image_column": "img"}
    run = SimpleNamespace(
        config=SimpleNamespace(to_dict=lambda: {"epochs": 1, "plugin_options": dict(options)}),
        image_size=8, classes=["a"], backbone=SimpleNamespace(weights="none"), device="cpu", steps_per_epoch=1,
    )
    assert tlcore_wandb.run_config(run)["plugin_options"] == {"image_column": "img"}


def test_the_installed_distribution_registers_the_callback_off_by_default(tlcore_installed):
    host = tlcore_installed("wandb")
    row = next(row for row in host.catalog("callbacks").listing("wandb"))
    assert row.plugin == "wandb" and not row.info.get("default")
    assert host.records["wandb"].distribution == "tlcore-wandb" and host.records["wandb"].first_party
