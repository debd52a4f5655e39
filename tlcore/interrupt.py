"""Ctrl-C and SIGTERM: stop at the next step boundary, save, and say how to resume.

The first signal only sets a flag the training loop checks after every step.
The handlers are then put back to the defaults, so a second Ctrl-C stops at
once (KeyboardInterrupt) and a second SIGTERM terminates.
"""

from __future__ import annotations

import signal
import threading

from tlcore.errors import TlcoreError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(TlcoreError):
    """The run stopped on a signal after saving a resumable state."""

    exit_code = 130


class StopRequest:
    """A context manager that turns the first SIGINT/SIGTERM into a flag."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        for number in SIGNALS:  # a second signal acts at once
            signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
