"""The callback interface and how a run's callbacks are chosen and called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlcore.errors import PluginError, TlcoreError
from tlcore.registry import Catalog

if TYPE_CHECKING:
    from tlcore.state import RunState


class Callback:
    """Base class for callbacks; override the events you need. One instance serves one run."""

    name = "callback"

    def on_fit_start(self, run: RunState) -> None:
        """After the model, data and run folder are ready, before the first epoch."""

    def on_epoch_start(self, run: RunState) -> None:
        """Before the first training step of ``run.epoch``."""

    def on_train_batch_end(self, run: RunState) -> None:
        """After each optimizer step. Do not read device tensors here on every call: it stalls the GPU."""

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """After validation, with the epoch's metrics (also appended to ``run.history``)."""

    def on_fit_end(self, run: RunState) -> None:
        """Once after the last epoch (or an early stop), before fit returns."""

    def state_dict(self) -> dict:
        """JSON-ready state to save with a resumable run (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, when a run resumes."""


class CallbackList:
    """Calls every callback in order; an exception is re-raised naming the callback that raised it."""

    def __init__(self, callbacks: list[tuple[str, Callback]]):
        self.callbacks = callbacks

    def __getattr__(self, event: str):
        if not event.startswith("on_"):
            raise AttributeError(event)

        def dispatch(*args: Any) -> None:
            for name, callback in self.callbacks:
                try:
                    getattr(callback, event)(*args)
                except TlcoreError:
                    raise
                except Exception as error:
                    raise PluginError(f"callback {name} failed in {event}: {type(error).__name__}: {error}") from error

        return dispatch

    def names(self) -> list[str]:
        """The selected callbacks' names, in calling order."""
        return [name for name, _ in self.callbacks]


def select_callbacks(catalog: Catalog, requested: list[str]) -> list[str]:
    """Callback names for a run.

    No request gives the defaults (callbacks registered with ``default=True``).
    A request whose items all start with + or - edits the defaults; otherwise
    it is the exact list.
    """
    defaults = [row.name for row in catalog.listing() if row.info.get("default")]
    signed = all(item[:1] in "+-" for item in requested)
    chosen = list(defaults) if signed else []
    for item in requested:
        name = item.lstrip("+-")
        catalog.resolve(name)  # unknown names fail here, with close matches
        if item.startswith("-"):
            if name in chosen:
                chosen.remove(name)
        elif name not in chosen:
            chosen.append(name)
    return chosen
