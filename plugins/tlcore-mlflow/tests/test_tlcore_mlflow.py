"""tlcore-mlflow against a local MLflow file store in a temporary folder: parameters, metrics, artifacts, status."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import tlcore_mlflow

import tlcore
from tlcore.callbacks.base import Callback
from tlcore.errors import ConfigError, PluginError

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch, tlcore_register):
    """MLflow pointed at a file store under tmp_path (MLflow's own variables), and the plugin registered."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in to use a file store
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME"):
        monkeypatch.delenv(name, raising=False)
    tlcore_register(tlcore_mlflow, "mlflow")
    return mlflow.MlflowClient(uri)


def only_run(client, experiment="tlcore"):
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_a_run_logs_parameters_metrics_and_artifacts(store, tlcore_run, tmp_path):
    result = tlcore_run(epochs=2, callbacks="-progress,+mlflow")
    logged = only_run(store)
    assert logged.info.status == "FINISHED" and logged.info.run_name == result.output_dir.name
    params = logged.data.params
    assert params["backbone"] == "tlcore.testing:tiny" and params["epochs"] == "2" and params["lr"] == "0.01"
    assert params["callbacks"] == "-progress,+mlflow" and params["resolved.classes"] == "2"
    lines = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    history = store.get_metric_history(logged.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(line["epoch"], line["val_acc"]) for line in lines]
    assert [m.step for m in store.get_metric_history(logged.info.run_id, "train_loss")] == [1, 2]
    names = {artifact.path for artifact in store.list_artifacts(logged.info.run_id)}
    assert {"best.safetensors", "README.md", "config.json", "metrics.jsonl"} <= names
    local = store.download_artifacts(logged.info.run_id, "best.safetensors", str(tmp_path / "down"))
    assert open(local, "rb").read() == (result.output_dir / "best.safetensors").read_bytes()
    assert logged.data.tags["tlcore.run_folder"] == str(result.output_dir.resolve())


def test_the_experiment_and_run_name_come_from_mlflows_variables(store, tlcore_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits-study")
    monkeypatch.setenv("MLFLOW_RUN_NAME", "first try")
    tlcore_run(callbacks="-progress,+mlflow")
    assert only_run(store, "digits-study").info.run_name == "first try"


def test_plugin_options_win_over_the_variables(monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    config = SimpleNamespace(plugin_options={"mlflow_experiment": "from-flag", "mlflow_tracking_uri": None})
    assert tlcore_mlflow.setting(config, "mlflow_experiment", "MLFLOW_EXPERIMENT_NAME") == "from-flag"
    assert tlcore_mlflow.setting(config, "mlflow_tracking_uri", "NOT_SET_ANYWHERE", "d") == "d"
    assert tlcore_mlflow.setting(SimpleNamespace(), "mlflow_experiment", "MLFLOW_EXPERIMENT_NAME") == "from-env"


class FailsAtEpochEnd(Callback):
    name, order = "fails", 5

    def on_epoch_end(self, run, metrics):
        raise RuntimeError("disk on fire")


class FailingPlugin:
    @tlcore.hookimpl
    def tlcore_register_callbacks(self, register):
        register("fails", lambda config: FailsAtEpochEnd())


def test_a_failed_run_is_closed_as_failed_with_what_it_has(store, tlcore_run, tlcore_register):
    tlcore_register(FailingPlugin(), "failing")
    with pytest.raises(PluginError, match="disk on fire"):
        tlcore_run(epochs=2, callbacks="-progress,+fails,+mlflow")
    logged = only_run(store)
    assert logged.info.status == "FAILED"
    assert "config.json" in {artifact.path for artifact in store.list_artifacts(logged.info.run_id)}


def test_an_unusable_store_is_one_line_before_the_run_folder_exists(tlcore_register, tlcore_run, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    tlcore_register(tlcore_mlflow, "mlflow")
    with pytest.raises(ConfigError) as caught:
        tlcore_run(callbacks="-progress,+mlflow", output=str(tmp_path / "never"))
    message = str(caught.value)
    assert message.startswith("mlflow could not open the tracking store nosuchscheme://nowhere") and "\n" not in message
    assert not (tmp_path / "never").exists()


def test_a_resumed_run_continues_the_same_mlflow_run(store):
    logger = tlcore_mlflow.make_logger(SimpleNamespace())
    run = SimpleNamespace(
        output_dir="/tmp/x", history=[], config=SimpleNamespace(to_dict=lambda: {"epochs": 2}, backbone="b"),
        image_size=8, classes=["a", "b"], backbone=SimpleNamespace(weights="none"), device="cpu", steps_per_epoch=3,
    )
    logger.on_fit_start(run)
    logger.on_epoch_end(run, {"epoch": 1, "val_acc": 0.5})
    saved = json.loads(json.dumps(logger.state_dict()))  # through JSON, as train_state stores it
    logger.on_exception(run, type("RunInterrupted", (Exception,), {})())
    logger.on_fit_end(run)
    assert only_run(store).info.status == "KILLED"

    resumed = tlcore_mlflow.make_logger(SimpleNamespace())
    resumed.load_state_dict(saved)
    run.history = [{"epoch": 1, "val_acc": 0.5}]
    resumed.on_fit_start(run)
    resumed.on_epoch_end(run, {"epoch": 1, "val_acc": 0.5})  # the redone epoch is not logged twice
    resumed.on_epoch_end(run, {"epoch": 2, "val_acc": 0.75})
    resumed.on_fit_end(run)
    logged = only_run(store)
    assert logged.info.status == "FINISHED"
    assert [(m.step, m.value) for m in store.get_metric_history(logged.info.run_id, "val_acc")] == [(1, 0.5), (2, 0.75)]


@pytest.mark.parametrize("state", [{"run_id": "../../etc"}, {"run_id": 5}, {"run_id": "x" * 65}, [], {"other": 1}])
def test_a_damaged_saved_run_id_is_ignored(store, state):
    logger = tlcore_mlflow.make_logger(SimpleNamespace())
    logger.load_state_dict(state)
    assert logger.run_id is None


def test_tracker_settings_are_not_logged_as_parameters():
    options = {"mlflow_tracking_uri": "http://user:secret@host", "wandb_entity": "me", "image_column": "img"}
    run = SimpleNamespace(
        config=SimpleNamespace(to_dict=lambda: {"epochs": 1, "plugin_options": options}, plugin_options=options),
        image_size=8, classes=["a"], backbone=SimpleNamespace(weights="none"), device="cpu", steps_per_epoch=1,
    )
    params = tlcore_mlflow.run_parameters(run)
    assert params["plugin.image_column"] == "img" and "plugin_options" not in params
    assert not any("secret" in str(value) or "wandb" in key or "mlflow_" in key for key, value in params.items())


def test_the_installed_distribution_registers_the_callback_off_by_default(tlcore_installed):
    host = tlcore_installed("mlflow")
    row = next(row for row in host.catalog("callbacks").listing("mlflow"))
    assert row.plugin == "mlflow" and not row.info.get("default")
    assert host.records["mlflow"].distribution == "tlcore-mlflow" and host.records["mlflow"].first_party
