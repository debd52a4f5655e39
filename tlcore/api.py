"""The Python API for training: ``tlcore.fit(**options)`` runs exactly what ``tlcore run`` runs.

Keyword options are the RunConfig fields, i.e. the `tlcore run` flags with
underscores (``batch_size=8``, ``callbacks="+example:summary"``). They are
checked by the same code as the command line and config files, so an unknown
or ill-typed option raises the same one-line ConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlcore.config import build_config, load_config_file

if TYPE_CHECKING:
    from tlcore.plugins import PluginHost
    from tlcore.train import RunResult


def fit(*, config_file: str | Path | None = None, host: PluginHost | None = None, **options: Any) -> RunResult:
    """Train one run and return its RunResult (output_dir, history, config, model).

    ``config_file`` is a TOML file like ``tlcore run --config``; ``options``
    override it, and an option given as None keeps its default (as an absent
    flag does). ``host`` is the plugin host to take components from (default:
    the process-wide one, which sees ``tlcore.register``).
    """
    from tlcore.train import fit as train_fit  # the training stack loads only when a run starts

    file_values = load_config_file(Path(config_file)) if config_file is not None else {}
    return train_fit(build_config(file_values, options, host), host)  # host: its plugins' options too
