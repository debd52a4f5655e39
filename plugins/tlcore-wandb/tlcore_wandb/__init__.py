"""tlcore-wandb: log tlcore runs to Weights & Biases (a tlcore plugin, entry point ``wandb``; callback ``wandb``).

Selected with ``--callbacks +wandb``. At the start of a run it starts a W&B run
with the resolved configuration as its config; after every epoch it logs the
epoch's metrics (with ``epoch`` as the x-axis); when the run ends it logs the
checkpoint (``best.safetensors``) and the model card (``README.md``) as a
``model`` artifact, and ``config.json``, ``metrics.jsonl`` and, where
tlcore-viz wrote them, ``report.html`` and its figures as a ``report``
artifact, then finishes the run (exit code 0, or 1 when the run failed or
was interrupted). A resumed run continues the same W&B run.

Settings: ``--wandb-project``, ``--wandb-entity``, ``--wandb-mode``
(``online``, ``offline``, ``disabled``) and ``--wandb-run-name`` where tlcore's
plugin options are available (also config keys), else W&B's own variables
``WANDB_PROJECT`` (default ``tlcore``), ``WANDB_ENTITY``, ``WANDB_MODE``,
``WANDB_NAME``; files go under ``WANDB_DIR``. ``WANDB_MODE=offline`` keeps
everything on the machine (``wandb sync`` uploads it later). wandb is
imported only when a run starts with the callback selected.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from tlcore import Callback, ConfigError, TlcoreError, first_line, hookimpl

__version__ = "0.1.0"

DEFAULT_PROJECT = "tlcore"
MODES = ("online", "offline", "disabled")
TRACKER_PREFIXES = ("mlflow_", "wandb_")
MODEL_FILES = ("best.safetensors", "README.md")
REPORT_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "report.html")
_RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class TrackerError(TlcoreError):
    """W&B could not start or record the run."""


def setting(config: Any, option: str, env: str, default: str | None = None) -> str | None:
    """A setting: the plugin option ``option`` of the run (when tlcore passes plugin options), else ``env``, else default."""
    given = (getattr(config, "plugin_options", None) or {}).get(option)
    if given not in (None, ""):
        return str(given)
    return os.environ.get(env) or default


class WandbLogger(Callback):
    """The ``wandb`` callback: config at the start, metrics per epoch, artifacts and the exit code at the end."""

    name = "wandb"
    order = 20  # after the checkpoint, the model card and tlcore-viz's report, which it uploads

    def __init__(self, project: str, entity: str | None = None, mode: str | None = None, run_name: str | None = None):
        # None: W&B's own variable decides (WANDB_ENTITY, WANDB_MODE), as W&B documents it
        if mode is not None and mode not in MODES:
            raise ConfigError(f"wandb_mode {mode!r} is not accepted; accepted: {', '.join(MODES)}")
        self.project, self.entity, self.mode, self.run_name = project, entity, mode, run_name
        self.run_id: str | None = None
        self.wandb_run: Any = None
        self.logged_epochs: set[int] = set()
        self.exit_code = 0

    def state_dict(self) -> dict:
        """The W&B run's id, so a resumed tlcore run continues it."""
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the W&B run's id (ignored unless it looks like one: the state file is read from disk)."""
        run_id = state.get("run_id") if isinstance(state, dict) else None
        if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id):
            self.run_id = run_id

    def on_fit_start(self, run: Any) -> None:
        """Start the W&B run (or resume it) with the resolved configuration."""
        try:
            import wandb

            options: dict[str, Any] = {
                "project": self.project,
                "entity": self.entity,
                "mode": self.mode,
                "name": self.run_name or Path(run.output_dir).name,
                "config": run_config(run),
                "tags": ["tlcore"],
                "reinit": "create_new",  # several tlcore runs in one process (tlcore cv, notebooks)
            }
            if self.run_id is not None:
                options.update(id=self.run_id, resume="allow")
            self.wandb_run = wandb.init(**{key: value for key, value in options.items() if value is not None})
        except Exception as error:
            raise TrackerError(f"wandb could not start the run: {type(error).__name__}: {first_line(error)}") from None
        self.run_id = self.wandb_run.id
        self.logged_epochs = {int(m["epoch"]) for m in run.history}
        self.wandb_run.define_metric("epoch")
        self.wandb_run.define_metric("*", step_metric="epoch")

    def on_epoch_end(self, run: Any, metrics: dict[str, Any]) -> None:
        """Log the epoch's numeric metrics against ``epoch``."""
        epoch = int(metrics["epoch"])
        if self.wandb_run is None or epoch in self.logged_epochs:
            return
        self.wandb_run.log({key: value for key, value in metrics.items() if _is_number(value)})
        self.logged_epochs.add(epoch)

    def on_exception(self, run: Any, error: BaseException) -> None:
        """The W&B run will finish with exit code 1."""
        self.exit_code = 1

    def on_fit_end(self, run: Any) -> None:
        """Log the model and report artifacts; finish the W&B run."""
        if self.wandb_run is None:
            return
        import wandb

        folder = Path(run.output_dir)
        stem = re.sub(r"[^0-9A-Za-z_.-]", "-", f"{folder.name}")[:100]
        for kind, files in (("model", model_files(folder)), ("report", report_files(folder))):
            if files:
                artifact = wandb.Artifact(f"{stem}-{kind}", type=kind, metadata={"run_folder": str(folder.resolve())})
                for path in files:
                    artifact.add_file(str(path), name=path.name)
                self.wandb_run.log_artifact(artifact)
        self.wandb_run.finish(exit_code=self.exit_code)
        self.wandb_run = None


def run_config(run: Any) -> dict[str, Any]:
    """The resolved configuration (every RunConfig field) and what it resolved to, for the W&B run's config."""
    config = dict(run.config.to_dict())
    if isinstance(config.get("plugin_options"), dict):  # the trackers' own settings (a URI may embed a password)
        config["plugin_options"] = {
            name: value for name, value in config["plugin_options"].items() if not name.startswith(TRACKER_PREFIXES)
        }
    config["resolved"] = {
        "image_size": run.image_size,
        "classes": list(run.classes),
        "weights": run.backbone.weights,
        "device": str(run.device),
        "steps_per_epoch": run.steps_per_epoch,
    }
    return config


def model_files(folder: Path) -> list[Path]:
    """The checkpoint and the model card, where present."""
    return [folder / name for name in MODEL_FILES if (folder / name).is_file()]


def report_files(folder: Path) -> list[Path]:
    """The configuration, the metrics logs and tlcore-viz's report with its figures, where present."""
    found = [folder / name for name in REPORT_FILES if (folder / name).is_file()]
    if (folder / "report.html").is_file():
        found += sorted(path for path in folder.glob("*.png") if path.is_file())
    return found



def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_logger(config: Any) -> WandbLogger:
    """The callback for a run of ``config``, with its settings (plugin options, else W&B's variables)."""
    return WandbLogger(
        project=setting(config, "wandb_project", "WANDB_PROJECT", DEFAULT_PROJECT),
        entity=setting(config, "wandb_entity", "WANDB_ENTITY"),
        mode=(getattr(config, "plugin_options", None) or {}).get("wandb_mode"),  # else wandb reads WANDB_MODE itself
        run_name=setting(config, "wandb_run_name", "WANDB_NAME"),
    )


@hookimpl
def tlcore_register_callbacks(register) -> None:
    """The ``wandb`` callback (not run by default: select it with ``--callbacks +wandb``)."""
    register("wandb", make_logger, description="log config, metrics, checkpoint and report to Weights & Biases")


@hookimpl
def tlcore_register_options(register) -> None:
    """Where to log: flags of `tlcore run` and config-file keys (each falls back to W&B's own variable)."""
    register(
        "wandb_project", kind=str, help="with --callbacks +wandb: the W&B project (default: WANDB_PROJECT, else tlcore)"
    )
    register("wandb_entity", kind=str, help="with --callbacks +wandb: the W&B entity (default: WANDB_ENTITY)")
    register(
        "wandb_mode", kind=str, choices=MODES,
        help="with --callbacks +wandb: online, offline (nothing leaves the machine) or disabled (default: WANDB_MODE)",
    )
    register("wandb_run_name", kind=str, help="with --callbacks +wandb: the run's name (default: the run folder's)")
