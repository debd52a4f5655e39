"""Ctrl-C and SIGTERM: stop at the next step boundary, save, and say how to resume.

The first signal only sets a flag the training loop checks after every step.
The handlers are then put back to the defaults, so a second Ctrl-C stops at
once (KeyboardInterrupt) and a second SIGTERM terminates.

A signal sent to the whole process group (Ctrl-C in a terminal; ``timeout``,
Slurm and systemd send SIGTERM that way) also reaches DataLoader workers.
They ignore it (:func:`ignore_stop_signals`, their ``worker_init_fn``): the
main process alone decides when to stop, and shuts them down itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from tlcore.errors import TlcoreError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of every DataLoader: the worker leaves SIGINT and SIGTERM to the main process.

    Without it, SIGTERM to the process group (``timeout``, Slurm, systemd)
    kills the workers, and the main process, which is saving and stopping on
    the same signal, sees "DataLoader worker is killed by signal" raised
    wherever it happens to be. SIGINT (Ctrl-C in a terminal) is ignored.
    SIGTERM is taken by a thread that reads who sent it: from the process that
    started the worker (the loader shutting it down, multiprocessing at exit)
    it ends the worker; from anyone else it is ignored, and the worker ends
    when its loader shuts it down or its parent exits. Where the platform
    cannot tell the sender (no ``sigwaitinfo``: macOS, Windows) SIGTERM keeps
    its default action.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = multiprocessing.parent_process()
    owner = parent.pid if parent is not None and parent.pid else os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit the mask
    threading.Thread(target=_end_on_owners_sigterm, args=(owner,), name="tlcore-sigterm", daemon=True).start()


def _end_on_owners_sigterm(owner: int) -> None:
    """Wait for SIGTERM; end the process when its owner sent it (or the owner is gone), else ignore it."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == owner or os.getppid() != owner and not _alive(owner):
            os._exit(0)  # a worker its loader ends: a normal end, not a crash for the loader to report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
