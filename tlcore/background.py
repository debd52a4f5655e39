"""Writing the training state on a thread, so the next epoch trains while the file reaches the disk."""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundWrite:
    """At most one write in flight; ``wait()`` blocks until it is on disk and re-raises its failure.

    The caller snapshots everything the write needs before submitting it (the
    training state is copied tensor by tensor), and waits before anything that
    must come after it on disk, so the files on disk are always those of some
    moment of the plain sequential order.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Start ``write`` on a thread once the previous write has finished."""
        self.wait()
        # not a daemon: an interpreter that exits waits for the file instead of abandoning it half-written
        self._thread = threading.Thread(target=self._run, args=(write,), name="tlcore-state-writer")
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as error:  # handed to the training thread at its next wait()
            self._error = error

    def wait(self) -> None:
        """Block until the write in flight (if any) has finished; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
