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
    # Callbacks of a run are called in ascending order, ties in the order selected. The metrics log has -1:
    # an epoch's line is in metrics.jsonl before any other callback (a checkpoint) acts on the epoch.
    order = 0

    def on_fit_start(self, run: RunState) -> None:
        """After the model, data and run folder are ready, before the first epoch."""

    def on_epoch_start(self, run: RunState) -> None:
        """Before the first training step of ``run.epoch``."""

    def on_train_batch_end(self, run: RunState) -> None:
        """After each optimizer step. Do not read device tensors here on every call: it stalls the GPU."""

    def on_epoch_end(self, run: RunState, metrics: dict[str, Any]) -> None:
        """After validation, with the epoch's metrics (also appended to ``run.history``)."""

    def on_exception(self, run: RunState, error: BaseException) -> None:
        """When an error or an interruption ends the run, before :meth:`on_fit_end`.

        ``error`` is what fit is about to raise: ``RunInterrupted`` after Ctrl-C
        or SIGTERM (the state is saved), ``KeyboardInterrupt`` after a second
        Ctrl-C, or any other failure. Called only after :meth:`on_fit_start`.
        An exception raised here is printed as a warning and does not replace
        ``error``.
        """

    def on_fit_end(self, run: RunState) -> None:
        """Once when the run ends, however it ends, if :meth:`on_fit_start` was called: close files here.

        After the last epoch or an early stop, before fit returns; after
        :meth:`on_exception` when an error or an interruption ends the run
        (then ``run.history`` holds only the completed epochs).
        """

    def state_dict(self) -> dict:
        """JSON-ready state to save with a resumable run (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, when a run resumes."""


class CallbackList:
    """Calls every callback in order; an exception is re-raised naming the callback that raised it."""

    def __init__(self, callbacks: list[tuple[str, Callback]]):
        # by ``order`` (stable: ties keep the selection's order), so the metrics log always runs first
        self.callbacks = sorted(callbacks, key=lambda item: getattr(item[1], "order", 0))

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

    def notify_all(self, event: str, *args: Any) -> list[str]:
        """Call ``event`` on every callback, even after one raises; one message per failure, in calling order.

        For the end of a run that already failed: each callback still gets the
        event, and no callback's failure replaces the run's own error.
        """
        failures = []
        for name, callback in self.callbacks:
            try:
                getattr(callback, event)(*args)
            except Exception as error:
                failures.append(f"callback {name} failed in {event}: {type(error).__name__}: {error}")
        return failures

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
