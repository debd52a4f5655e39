"""tlcore-mlflow: log tlcore runs to MLflow (a tlcore plugin, entry point ``mlflow``; callback ``mlflow``).

Selected with ``--callbacks +mlflow``. At the start of a run it opens an MLflow
run in the experiment (default ``tlcore``) and logs the resolved configuration
as parameters; after every epoch it logs the epoch's metrics (step = epoch);
when the run ends it uploads the checkpoint (``best.safetensors``), the model
card (``README.md``), ``config.json``, ``metrics.jsonl`` and, where tlcore-viz
wrote them, ``report.html`` and its figures as artifacts, and closes the run
as FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED. A resumed run continues the
same MLflow run.

Where it logs: ``--mlflow-tracking-uri`` (a plugin option, also the config
key ``mlflow_tracking_uri``) where tlcore's plugin options are available,
else MLflow's own ``MLFLOW_TRACKING_URI``; the experiment from
``--mlflow-experiment`` or ``MLFLOW_EXPERIMENT_NAME``; the run's name from
``--mlflow-run-name`` or ``MLFLOW_RUN_NAME`` (default: the run folder's name).
mlflow is imported only when a run starts with the callback selected, so
``tlcore --help`` and the listings stay fast.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

from tlcore import Callback, ConfigError, TlcoreError, first_line, hookimpl

__version__ = "0.1.0"

DEFAULT_EXPERIMENT = "tlcore"
ARTIFACTS = ("best.safetensors", "README.md", "config.json", "metrics.jsonl", "metrics.csv", "report.html")
TRACKER_PREFIXES = ("mlflow_", "wandb_")  # the trackers' own settings (a URI may embed a password)
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value
_RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_UNSAFE_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")  # what MLflow accepts in metric and parameter names


def setting(config: Any, option: str, env: str, default: str | None = None) -> str | None:
    """A setting: the plugin option ``option`` of the run (when tlcore passes plugin options), else ``env``, else default."""
    given = (getattr(config, "plugin_options", None) or {}).get(option)
    if given not in (None, ""):
        return str(given)
    return os.environ.get(env) or default


class MlflowLogger(Callback):
    """The ``mlflow`` callback: parameters at the start, metrics per epoch, artifacts and status at the end.

    ``tracking_uri`` None uses MLflow's own (MLFLOW_TRACKING_URI or its
    default). The client is opened when the callback is made, before the run
    folder exists, so an unreachable or refused store fails the run at once
    with one line.
    """

    name = "mlflow"
    order = 20  # after the checkpoint, the model card and tlcore-viz's report, which it uploads

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str | None = None):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run_id: str | None = None  # set by on_fit_start, or restored by load_state_dict on --resume
        self.logged_epochs: set[int] = set()
        self._pending: list[dict] = []
        self.status = "FINISHED"
        try:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        except TlcoreError:
            raise
        except Exception as error:
            where = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
            raise ConfigError(
                f"mlflow could not open the tracking store {where} (experiment {experiment!r}): "
                f"{type(error).__name__}: {first_line(error)}; set --mlflow-tracking-uri or MLFLOW_TRACKING_URI"
            ) from None

    def state_dict(self) -> dict:
        """The MLflow run's id, so a resumed tlcore run continues it."""
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the MLflow run's id (ignored unless it looks like one: the state file is read from disk)."""
        run_id = state.get("run_id") if isinstance(state, dict) else None
        if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id):
            self.run_id = run_id

    def on_fit_start(self, run: Any) -> None:
        """Open the MLflow run (or continue the resumed one) and log the resolved configuration as parameters."""
        from mlflow.entities import Param

        if self.run_id is not None:  # --resume: the same MLflow run, its earlier epochs already logged
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged_epochs = {int(m["epoch"]) for m in run.history}
                return
            except Exception:  # not in this store (another tracking URI now): a new MLflow run, every epoch logged
                self.run_id = None
                for record in run.history:
                    self._pending.append(record)
        tags = {"tlcore.run_folder": str(Path(run.output_dir).resolve()), "tlcore.backbone": run.config.backbone}
        created = self.client.create_run(
            self.experiment_id, run_name=self.run_name or Path(run.output_dir).name, tags=tags
        )
        self.run_id = created.info.run_id
        params = [Param(_key(key), _param_value(value)) for key, value in run_parameters(run).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        while self._pending:  # epochs of a resumed run that this MLflow run has not seen
            self.on_epoch_end(run, self._pending.pop(0))

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        """Log the epoch's numeric metrics at step = epoch (1-based)."""
        from mlflow.entities import Metric

        epoch = int(metrics["epoch"])
        if self.run_id is None or epoch in self.logged_epochs:
            return
        now = int(time.time() * 1000)
        batch = [Metric(_key(key), float(value), now, epoch) for key, value in metrics.items() if _is_number(value)]
        self.client.log_batch(self.run_id, metrics=batch)
        self.logged_epochs.add(epoch)

    def on_exception(self, run: Any, error: BaseException) -> None:
        """An interruption ends the MLflow run as KILLED, any other error as FAILED."""
        interrupted = type(error).__name__ in ("RunInterrupted", "KeyboardInterrupt")
        self.status = "KILLED" if interrupted else "FAILED"

    def on_fit_end(self, run: Any) -> None:
        """Upload the checkpoint, card, config, logs and report; close the MLflow run with its status."""
        if self.run_id is None:
            return
        for path in artifact_files(Path(run.output_dir)):
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=self.status)


def run_parameters(run: Any) -> dict[str, Any]:
    """The resolved configuration (every RunConfig field), and what it resolved to, as flat parameters."""
    params = dict(run.config.to_dict())
    params.update(
        {
            "resolved.image_size": run.image_size,
            "resolved.classes": len(run.classes),
            "resolved.weights": run.backbone.weights,
            "resolved.device": str(run.device),
            "resolved.steps_per_epoch": run.steps_per_epoch,
        }
    )
    for name, value in (getattr(run.config, "plugin_options", None) or {}).items():
        if not name.startswith(TRACKER_PREFIXES):  # where trackers log may hold credentials: not a parameter
            params[f"plugin.{name}"] = value
    params.pop("plugin_options", None)
    return params


def artifact_files(folder: Path) -> list[Path]:
    """The files of a run folder worth keeping with the tracked run: ARTIFACTS present, and the report's figures."""
    found = [folder / name for name in ARTIFACTS if (folder / name).is_file()]
    if (folder / "report.html").is_file():
        found += sorted(path for path in folder.glob("*.png") if path.is_file())
    return found



def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key(name: str) -> str:
    return _UNSAFE_KEY.sub("_", str(name))[:250]


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"


def make_logger(config: Any) -> MlflowLogger:
    """The callback for a run of ``config``, with its settings (plugin options, else MLflow's variables)."""
    return MlflowLogger(
        tracking_uri=setting(config, "mlflow_tracking_uri", "MLFLOW_TRACKING_URI"),
        experiment=setting(config, "mlflow_experiment", "MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT),
        run_name=setting(config, "mlflow_run_name", "MLFLOW_RUN_NAME"),
    )


@hookimpl
def tlcore_register_callbacks(register) -> None:
    """The ``mlflow`` callback (not run by default: select it with ``--callbacks +mlflow``)."""
    register("mlflow", make_logger, description="log parameters, metrics, checkpoint and report to MLflow")


@hookimpl
def tlcore_register_options(register) -> None:
    """Where to log: flags of `tlcore run` and config-file keys (each falls back to MLflow's own variable)."""
    register(
        "mlflow_tracking_uri", kind=str,
        help="with --callbacks +mlflow: the MLflow tracking URI (default: MLFLOW_TRACKING_URI)",
    )
    register("mlflow_experiment", kind=str, help="with --callbacks +mlflow: the experiment (default: tlcore)")
    register("mlflow_run_name", kind=str, help="with --callbacks +mlflow: the run's name (default: the run folder's)")
