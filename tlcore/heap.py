"""Start-up of the ``tlcore`` command: no full garbage collection while it imports and builds.

Importing torch, torchvision and TorchDynamo creates some 350,000 Python objects
and almost no garbage (a full collection at the end of a run's start-up found 73
unreachable objects). Yet CPython runs a full (generation-2) collection each
time the long-lived objects have grown by a quarter, and each scans all of them:
six during a small run's start-up, 50 to 280 ms each and growing, about a second
on the loaded 2-core machine, all for nothing.

The ``tlcore`` command (which owns its process; a library user's process is left
alone) calls :func:`start_up` first: the young generations are still collected
as usual, full collections wait. :func:`started` ends that once the command's
objects are built (the model, the data, the optimizer; ``tlcore.fit`` and
``tlcore.load_checkpoint`` call it): it collects the young generations, moves
every surviving object into the permanent generation (``gc.freeze()``: later
full collections skip them, as they would find nothing there anyway) and puts
the thresholds back, so the work that follows is collected as usual. A command
that never calls it gets the usual collections back after :data:`START_UP_LIMIT`
young collections. Objects, results and files are the same; only when the
collector runs changes.
"""

from __future__ import annotations

import gc

NO_FULL_COLLECTION = 2**30  # generation-2 threshold while starting: gen-1 collections never reach it
# A command that never calls started() (list, info, a plugin's command) gets full collections back after this many
# generation-1 collections: a run's whole start-up makes about 80.
START_UP_LIMIT = 500

_saved: list[tuple[int, int, int]] = []  # the thresholds start_up replaced, until started() puts them back
_young = [0]  # generation-1 collections since start_up


def _count(phase: str, info: dict) -> None:
    """gc callback: past START_UP_LIMIT generation-1 collections, full collections resume (nothing is frozen)."""
    if phase != "stop" or info["generation"] != 1 or not _saved:
        return
    _young[0] += 1
    if _young[0] >= START_UP_LIMIT:
        gc.set_threshold(*_saved.pop())


def start_up() -> None:
    """Postpone full collections until :func:`started` (called by the ``tlcore`` command only; idempotent)."""
    if _saved:
        return
    thresholds = gc.get_threshold()
    _saved.append(thresholds)
    _young[0] = 0
    if _count not in gc.callbacks:
        gc.callbacks.append(_count)
    gc.set_threshold(thresholds[0], thresholds[1], NO_FULL_COLLECTION)


def started() -> None:
    """The start-up is over: freeze what it built and collect as usual from now on (no-op without :func:`start_up`).

    Young garbage is collected first, so nothing but long-lived objects is frozen.
    """
    if _count in gc.callbacks:
        gc.callbacks.remove(_count)
    if not _saved:
        return
    thresholds = _saved.pop()
    gc.collect(1)
    gc.freeze()
    gc.set_threshold(*thresholds)


def starting() -> bool:
    """Whether full collections are still postponed (between :func:`start_up` and :func:`started`)."""
    return bool(_saved)
