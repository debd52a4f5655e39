"""tlcore.heap: the tlcore command postpones full garbage collections during start-up; a library process is left alone.

Each check runs in a fresh interpreter, whose collector has not yet seen this test process's objects.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlcore import heap

REPO = Path(__file__).resolve().parent.parent


def fresh(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_start_up_postpones_full_collections_and_started_freezes_and_restores():
    result = fresh("""
import gc, json
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
default = gc.get_threshold()
from tlcore import heap
heap.start_up()
heap.start_up()  # idempotent
starting = heap.starting()
keep = []
for _ in range(200_000):  # long-lived objects enough for several full collections at the default thresholds
    keep.append({"a": [1]})
during = len(full)
heap.started()
heap.started()  # a second call changes nothing
cycle = []
cycle.append(cycle)  # garbage made after start-up is still collected
del cycle
print(json.dumps({"starting": starting, "during": during, "frozen": gc.get_freeze_count(),
                  "restored": gc.get_threshold() == default, "after": heap.starting(), "collected": gc.collect() >= 1}))
""")
    assert result == {"starting": True, "during": 0, "frozen": result["frozen"], "restored": True, "after": False,
                      "collected": True}
    assert result["frozen"] >= 200_000


def test_without_the_command_nothing_changes():
    """A library process (tlcore.fit from a script) keeps its collector as it was: started() alone does nothing."""
    result = fresh("""
import gc, json
default = gc.get_threshold()
from tlcore import heap
heap.started()
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
keep = [{"a": [1]} for _ in range(200_000)]
print(json.dumps({"frozen": gc.get_freeze_count(), "same": gc.get_threshold() == default, "full": len(full) > 0}))
""")
    assert result == {"frozen": 0, "same": True, "full": True}


@pytest.fixture
def command_start_up():
    """This process as the tlcore command has it after start_up(); put back afterwards."""
    heap.start_up()
    yield
    if heap.starting():
        heap.started()
    gc.unfreeze()


def test_fit_ends_the_start_up_once_the_run_is_built(host, tiny_config, command_start_up):
    from tlcore.train import fit

    fit(tiny_config(epochs=1), host)
    assert not heap.starting()
    assert gc.get_freeze_count() > 0


def test_lr_find_ends_the_start_up(host, tiny_config, command_start_up):
    from tlcore.lr_find import find_lr
    from tlcore.train import started_processes

    config = tiny_config(lr="auto")
    with started_processes(config) as (world, device):
        find_lr(config, host, world, device, start_lr=1e-4, end_lr=1e-1, steps=4)
    assert not heap.starting()
    assert gc.get_freeze_count() > 0


def test_a_command_that_never_ends_its_start_up_gets_full_collections_back():
    result = fresh("""
import gc, json
from tlcore import heap
default = gc.get_threshold()
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
heap.START_UP_LIMIT = 5  # as if the command had run through 100 times a start-up's allocations
heap.start_up()
for _ in range(100_000):  # cyclic garbage: only the collector frees it, so the young collections keep coming
    cycle = []
    cycle.append(cycle)
print(json.dumps({"starting": heap.starting(), "restored": gc.get_threshold() == default, "full": len(full) > 0,
                  "frozen": gc.get_freeze_count()}))
""")
    assert result == {"starting": False, "restored": True, "full": True, "frozen": 0}
