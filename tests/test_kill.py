"""SIGKILL at random moments: every file in the run folder is whole or absent, and --resume finishes the run exactly.

A killed ``tlcore run`` gets no chance to clean up, so this is the test of the
atomic writes (temporary file, fsync, rename) and of the order in which a run
writes its files. Each killed process runs ``python -m tlcore run`` (through
:func:`runpy.run_module`, exactly what ``-m`` does) on the tiny test plugin,
exposed to it by a fake installed distribution's entry point.

Importing torch and torchvision takes about ten seconds on the shared CI
machine, so after one plain ``python -m tlcore run`` subprocess the test starts
the rest from a *fork server*: one Python process that imports tlcore once and
forks a child per command. The children are ordinary processes, killed with
SIGKILL by pid from this test; nothing in them can intercept it.

After every kill each file of the run folder is read completely:
config.json and every line of metrics.jsonl as JSON (epochs 1..n, no gap),
best/last.safetensors with :func:`tlcore.checkpoint.read_checkpoint`,
train_state.safetensors with :func:`tlcore.resume.load_train_state`, and the
files must agree with each other (the saved history is the start of
metrics.jsonl, the checkpoints are of the saved epoch or the one after it).
The only other names allowed are the temporary files of a write that the kill
interrupted (``.NAME.XXXXXXXX.tmp``, never read by tlcore) and the output
folder's write probe. The killed run is then resumed, and killed again, until
it completes; a completed run must match an uninterrupted one bit for bit.

Run with ``pytest -s tests/test_kill.py`` to see the counts.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from tlcore.checkpoint import read_checkpoint
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.testing import without_measurements, write_fake_distribution
from tlcore.weights import find_weights_file

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")

SEED = 8  # the kill moments and the choices between fresh runs and resumes follow this seed
RANDOM_KILLS = 8  # forked children killed at a random moment of their life
WRITE_KILLS = 5  # forked children killed while stopped inside a write, just before its rename
MAX_PROCESSES = 60
EPOCHS = 16  # many one-step epochs: a large share of the run is spent writing files
RUN_ARGS = [
    "run",
    "--backbone",
    "tlcore.testing:tiny",
    "--dataset",
    "tlcore.testing:shapes",
    "--weights",
    "none",
    "--batch-size",
    "36",  # one step per epoch
    "--epochs",
    str(EPOCHS),
    "--callbacks=-progress",
]
RESULT_FILES = ("config.json", "metrics.jsonl", "best.safetensors", "last.safetensors", STATE_FILE, "README.md")
# what atomic_write_bytes leaves behind when killed between creating its temporary file and renaming it
TEMP_NAME = re.compile(r"\.(" + "|".join(re.escape(name) for name in RESULT_FILES) + r")\.[^/]+\.tmp")
WRITE_PROBE = ".tlcore-write-test"  # create_output_dir's check that the folder is writable
TIMEOUT_S = 180

SERVER = r"""
import json, os, runpy, sys
import tlcore.cli, tlcore.train  # the slow imports, once, before any fork

def hold_inside_write(name, nth, marker):
    # stop (and say so in `marker`) at the nth rename of a complete temporary file onto `name`, just before it
    import time
    real_replace, count = os.replace, [0]
    def replace(source, target, **kwargs):
        if os.path.basename(target) == name and os.path.basename(source).startswith("." + name + "."):
            count[0] += 1
            if count[0] == nth:
                open(marker, "w").close()
                time.sleep(600)
        return real_replace(source, target, **kwargs)
    os.replace = replace

def run_child(argv, log, hold):
    if hold:
        hold_inside_write(**hold)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["tlcore", *argv]
    try:
        runpy.run_module("tlcore", run_name="__main__", alter_sys=True)  # what `python -m tlcore` does
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        return 99

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            code = 98
            try:
                code = run_child(request["argv"], request["log"], request.get("hold"))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        reply = {"pid": pid}
    else:  # poll
        done, status = os.waitpid(request["pid"], os.WNOHANG)
        reply = {"done": done != 0, "code": os.waitstatus_to_exitcode(status) if done else None}
    print(json.dumps(reply), flush=True)
"""


timeless = without_measurements


def fake_site(root: Path) -> Path:
    """A folder for PYTHONPATH holding a distribution whose entry point names the tiny test plugin."""
    return write_fake_distribution(root, "tlcore-tiny-kill", {"tiny": "tlcore.testing:tiny_plugin"})


class ForkServer:
    """A Python process that has imported tlcore and forks one child per ``python -m tlcore`` command."""

    def __init__(self, env: dict, cwd: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.children: set[int] = set()
        self.ready = False

    def _ask(self, request: dict) -> dict:
        if not self.ready:
            assert json.loads(self.process.stdout.readline()) == {"ready": True}, "the fork server did not start"
            self.ready = True
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def spawn(self, argv: list[str], log: Path, hold: dict | None = None) -> int:
        """Start ``python -m tlcore ARGV`` (output to ``log``); returns its pid.

        ``hold={"name": FILE, "nth": N, "marker": PATH}`` makes the child stop inside its Nth write of FILE,
        with the temporary file complete and just before the rename onto FILE, and create PATH to say so.
        """
        pid = self._ask({"op": "spawn", "argv": [str(a) for a in argv], "log": str(log), "hold": hold})["pid"]
        self.children.add(pid)
        return pid

    def poll(self, pid: int) -> int | None:
        """The exit code (negative: killed by that signal) once the child has ended, else None."""
        reply = self._ask({"op": "poll", "pid": pid})
        if reply["done"]:
            self.children.discard(pid)
            return reply["code"]
        return None

    def wait(self, pid: int, timeout: float = TIMEOUT_S) -> int:
        """Wait for a child to end; its exit code."""
        deadline = time.monotonic() + timeout
        while (code := self.poll(pid)) is None:
            assert time.monotonic() < deadline, f"child {pid} did not finish in {timeout} s"
            time.sleep(0.02)
        return code

    def close(self) -> None:
        """Kill children still running (by pid), then stop the server."""
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                self.wait(pid, 10)
            except (ProcessLookupError, AssertionError, OSError, ValueError):
                pass
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def check_run_folder(folder: Path, stats: Counter) -> int:
    """Read every file of a (possibly killed) run folder completely and check they agree; returns the saved epoch."""
    if not folder.exists():
        return 0
    present = {}
    for path in folder.iterdir():
        if path.name in RESULT_FILES:
            present[path.name] = path
        elif TEMP_NAME.fullmatch(path.name) or path.name == WRITE_PROBE:
            assert path.is_file()
            stats[f"temporary file {path}"] = 1
        else:
            pytest.fail(f"{folder} holds {path.name!r}, which is neither a result file nor a temporary file")
    stats["files checked"] += len(present)

    if "config.json" in present:
        assert "config" in json.loads(present["config.json"].read_text())
    metrics: list[dict] = []
    if "metrics.jsonl" in present:
        assert "config.json" in present
        text = present["metrics.jsonl"].read_text()
        assert text.endswith("\n"), "metrics.jsonl ends in half a line"
        metrics = [json.loads(line) for line in text.splitlines()]
        assert [m["epoch"] for m in metrics] == list(range(1, len(metrics) + 1))
    if "README.md" in present:  # the model card, written whole after each epoch
        card = present["README.md"].read_text()
        assert card.startswith("---\n") and card.rstrip().endswith("carry over."), "README.md is not a whole card"

    saved_epoch, history = 0, []
    if STATE_FILE in present:
        assert {"config.json", "metrics.jsonl", "best.safetensors", "last.safetensors"} <= set(present)
        state = load_train_state(folder)
        saved_epoch, history = state.record["epoch"], state.record["history"]
        assert state.record["epoch_step"] == 0, "only SIGINT/SIGTERM save mid-epoch"
        assert state.config["epochs"] == EPOCHS
    # metrics.jsonl is appended before the state is saved: it holds the saved epochs and at most one more
    assert saved_epoch <= len(metrics) <= saved_epoch + 1
    assert metrics[:saved_epoch] == history

    for name in ("best.safetensors", "last.safetensors"):
        if name in present:
            tensors, info = read_checkpoint(present[name])
            assert tensors and info.backbone == "tlcore.testing:tiny"
            # checkpoints are written after the metrics line and before the state of their epoch
            assert 1 <= info.epoch <= saved_epoch + 1
            if name == "last.safetensors":
                assert info.epoch >= saved_epoch
            if info.epoch <= len(metrics):
                assert timeless([info.metrics]) == timeless([metrics[info.epoch - 1]])
    if "best.safetensors" in present:
        assert find_weights_file(folder).name == "best.safetensors"  # never a temporary file
    return saved_epoch


def check_completed(folder: Path, reference: Path, stats: Counter) -> None:
    """A finished run: all epochs once each, and metrics and weights identical to the uninterrupted run."""
    assert check_run_folder(folder, stats) == EPOCHS
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert timeless(lines) == timeless(expected)
    for name in ("best.safetensors", "last.safetensors"):
        mine, info = read_checkpoint(folder / name)
        theirs, reference_info = read_checkpoint(reference / name)
        assert info.epoch == reference_info.epoch
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    stats["runs completed after kills"] += 1


def temporary_files(stats: Counter) -> int:
    """How many distinct temporary files the checks have seen so far."""
    return sum(1 for key in stats if key.startswith("temporary file "))


def last_error_line(log: Path) -> str:
    """The last non-empty line a child wrote."""
    return [line for line in log.read_text().splitlines() if line.strip()][-1]


def test_sigkill_at_random_moments_leaves_whole_files_and_resume_completes(tmp_path):
    rng = random.Random(SEED)
    stats: Counter = Counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(fake_site(tmp_path / "site")), os.environ.get("PYTHONPATH")) if p),
        "TLCORE_PLUGINS": "tiny",
        "OMP_NUM_THREADS": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()

    # 1. A plain `python -m tlcore run` subprocess, killed once, while the fork server imports beside it.
    plain = tmp_path / "plain"
    plain_process = subprocess.Popen(
        [sys.executable, "-m", "tlcore", *RUN_ARGS, "--output", str(plain)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = ForkServer(env, tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (plain / "config.json").exists() and plain_process.poll() is None:
            assert time.monotonic() < deadline, "the plain run never wrote config.json"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))  # within its training: the tiny run may end about a second after config.json
        plain_process.send_signal(signal.SIGKILL)
        plain_code = plain_process.wait(TIMEOUT_S)
        if plain_code == -signal.SIGKILL:
            stats["runs killed"] += 1
            stats["plain subprocesses killed"] += 1
        check_run_folder(plain, stats)
        if temporary_files(stats):
            stats["kills that left a temporary file"] += 1

        # 2. An uninterrupted run: what every killed and resumed run must end up as; it also times a run.
        reference = tmp_path / "reference"
        run_started, startup_seconds = time.monotonic(), None
        pid = server.spawn([*RUN_ARGS, "--output", reference], logs / "reference.log")
        while (code := server.poll(pid)) is None:
            if startup_seconds is None and (reference / "config.json").exists():
                startup_seconds = time.monotonic() - run_started
            assert time.monotonic() - run_started < TIMEOUT_S, "the reference run did not finish"
            time.sleep(0.005)
        assert code == 0, (logs / "reference.log").read_text()
        run_seconds = time.monotonic() - run_started
        startup_seconds = startup_seconds or run_seconds / 2
        epoch_seconds = (run_seconds - startup_seconds) / EPOCHS
        check_completed(reference, reference, stats)
        stats["runs completed after kills"] -= 1

        # 3. Fresh runs and resumes from the fork server, each SIGKILLed at a random moment of its life.
        unfinished = [plain] if plain_code != 0 else []
        if plain_code == 0:
            check_completed(plain, reference, stats)
        current, folders = None, 0
        kinds = ["at a random moment"] * RANDOM_KILLS + ["held inside a write"] * WRITE_KILLS
        rng.shuffle(kinds)
        for _ in range(MAX_PROCESSES):
            if not kinds:
                break
            if current is None:
                folders += 1
                current = tmp_path / f"run{folders}"
                argv = [*RUN_ARGS, "--output", current]
            else:
                argv = ["run", "--resume", current]
            log = logs / f"{current.name}.log"
            saved = load_train_state(current).record["epoch"] if (current / STATE_FILE).exists() else 0
            kind = kinds.pop()
            if kind == "held inside a write":
                names = RESULT_FILES if saved == 0 else RESULT_FILES[1:]  # a resumed run keeps config.json
                name = rng.choice(names)
                nth = 1 if name == "config.json" else rng.randint(1, max(1, (EPOCHS - saved) // 2))
                marker = tmp_path / f"held-{folders}-{len(kinds)}"
                pid = server.spawn(argv, log, {"name": name, "nth": nth, "marker": str(marker)})
                deadline = time.monotonic() + TIMEOUT_S
                while not marker.exists() and (code := server.poll(pid)) is None:
                    assert time.monotonic() < deadline, "the held child neither stopped nor finished"
                    time.sleep(0.005)
                code = None if marker.exists() else code
            else:
                pid = server.spawn(argv, log)
                time.sleep(rng.uniform(0.0, startup_seconds + (EPOCHS - saved) * epoch_seconds))  # any moment
                code = server.poll(pid)
            if code is None:
                os.kill(pid, signal.SIGKILL)
                code = server.wait(pid)
            if code == 0:  # it finished before the kill (or never made the write to stop in): try again
                check_completed(current, reference, stats)
                current = None
                kinds.append(kind)
                continue
            stats[f"kills {kind}"] += 1
            if kind == "held inside a write":
                stats[f"kills held inside a write of {name}"] += 1
            assert code == -signal.SIGKILL, log.read_text()
            stats["runs killed"] += 1
            temporary_before = temporary_files(stats)
            check_run_folder(current, stats)
            if temporary_files(stats) > temporary_before:
                stats["kills that left a temporary file"] += 1
            if not (current / STATE_FILE).exists():
                # killed before the first epoch's state was saved: --resume refuses cleanly, so start another run
                pid = server.spawn(["run", "--resume", current], log)
                assert server.wait(pid) == 2
                line = last_error_line(log)
                assert line.startswith("tlcore: error: ") and "holds no train_state" in line, line
                stats["kills before the first saved state"] += 1
                current = None
        assert not kinds, f"{len(kinds)} kills were not made in {MAX_PROCESSES} processes"
        if current is not None:
            unfinished.append(current)

        # 4. Every run that was left killed is resumed to the end.
        for folder in unfinished:
            if not (folder / STATE_FILE).exists():
                continue
            log = logs / f"{folder.name}.log"
            pid = server.spawn(["run", "--resume", folder], log)
            assert server.wait(pid) == 0, log.read_text()
            check_completed(folder, reference, stats)
    finally:
        server.close()
        if plain_process.poll() is None:
            plain_process.kill()
            plain_process.wait()

    for log in logs.iterdir():
        assert "Traceback" not in log.read_text(), log.read_text()
    # the plain subprocess counts when the kill reached it before it finished (check_run_folder checked it either way)
    assert stats["runs killed"] == stats["plain subprocesses killed"] + RANDOM_KILLS + WRITE_KILLS
    assert stats["runs completed after kills"] >= 1
    counts = {key: value for key, value in stats.items() if not key.startswith("temporary file ")}
    counts["temporary files left"] = temporary_files(stats)
    summary = ", ".join(f"{key}: {value}" for key, value in sorted(counts.items()))
    timing = (
        f"one run {run_seconds:.1f} s ({startup_seconds:.1f} s to config.json); {time.monotonic() - started:.0f} s in all"
    )
    print(f"\ntest_kill (seed {SEED}): {summary}; {timing}")
