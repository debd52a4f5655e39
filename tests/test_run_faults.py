"""Faults while running lose nothing and explain themselves.

- SIGTERM to the whole process group (what ``timeout``, Slurm and systemd
  send) stops a run with DataLoader workers like SIGTERM to the main process:
  it saves and prints the resume line, no traceback;
- a full disk during the background state write is one line, and the last
  complete state stays on disk and resumes;
- one run folder, one process: a second run or --resume fails at once naming
  the holder's pid, and a holder that died leaves no stale lock;
- metrics.jsonl holds an epoch before any checkpoint of it is written, in any
  callback order, and a resumed run keeps the line of the epoch it redoes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tlcore import cli
from tlcore.callbacks import builtin
from tlcore.errors import ResourceError
from tlcore.files import atomic_save_tensors, atomic_write_bytes
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.rundir import lock_run_folder, release_run_folder
from tlcore.testing import TINY_BACKBONE, TINY_DATASET, write_fake_distribution, write_image_folder

POSIX = pytest.mark.skipif(not hasattr(os, "fork"), reason="process groups and flock are POSIX")
TINY = ["--backbone", TINY_BACKBONE, "--dataset", TINY_DATASET, "--weights", "none", "--batch-size", "8"]


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main([str(a) for a in args])
    return stop.value.code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tlcore: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- a full disk ----------------------------------------------------------------------------

DISK_FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def test_disk_full_during_the_background_state_write(host, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real_save, calls = safetensors.torch.save_file, {"state": 0}

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(f".{STATE_FILE}."):
            calls["state"] += 1
            if calls["state"] == 2:  # the state of epoch 2, written on the background thread
                Path(filename).write_bytes(b"\0" * 100)  # half a file, as a full disk leaves it
                raise SafetensorError(DISK_FULL)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "run"
    code, err = run_cli(["run", *TINY, "--epochs", "3", "--callbacks=-progress", "--output", out], capsys)
    line = one_line(err)
    assert code == 2
    assert f"cannot write {out / STATE_FILE}: No space left on device" in line
    assert f"the last complete {STATE_FILE} is kept as it was" in line
    assert f"resume with: tlcore run --resume {out}" in line
    assert load_train_state(out).record["epoch"] == 1  # epoch 1's complete state, untouched
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # space freed: the run resumes from that state and ends
    code, err = run_cli(["run", "--resume", out], capsys)
    assert code == 0, err
    assert load_train_state(out).record["epoch"] == 3


def test_a_failed_write_of_any_file_is_one_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import tlcore.files as files

    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"old\n")

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(ResourceError, match="No space left on device; the last complete metrics.jsonl is kept"):
        atomic_write_bytes(target, b"new\n")
    with pytest.raises(ResourceError, match="no w.safetensors was written"):
        atomic_save_tensors(tmp_path / "w.safetensors", {}, {})
    assert target.read_bytes() == b"old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# -- one run folder, one process ------------------------------------------------------------

# another process holding a run folder as lock_run_folder does (flock on the folder), without importing torch
HOLDER = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
    "print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def held_folder(tmp_path):
    """A run folder locked by another live process; yields (folder, pid)."""
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


@POSIX
def test_a_second_process_fails_at_once_naming_the_holder(host, held_folder, capsys):
    folder, holder = held_folder
    (folder / STATE_FILE).write_bytes(b"not read: the lock is checked first")
    started = time.perf_counter()
    code, err = run_cli(["run", "--resume", folder], capsys)
    assert code == 2 and f"run folder {folder} is in use by process {holder.pid}" in one_line(err)
    assert time.perf_counter() - started < 5
    (folder / STATE_FILE).unlink()
    code, err = run_cli(["run", *TINY, "--output", folder], capsys)
    assert code == 2 and f"output folder {folder} is in use by process {holder.pid}" in one_line(err)


@POSIX
def test_a_dead_holder_leaves_no_stale_lock(held_folder):
    folder, holder = held_folder
    holder.kill()
    holder.wait()
    assert lock_run_folder(folder) == folder  # taken: the kernel dropped the dead process's lock
    assert list(folder.iterdir()) == []  # and nothing was added to the folder
    release_run_folder(folder)


# -- metrics before checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("order", [["metrics", "checkpoint"], ["checkpoint", "metrics"]])
def test_metrics_line_is_written_before_the_epochs_checkpoint(host, tiny_config, monkeypatch, order):
    from tlcore import checkpoint
    from tlcore.train import fit

    seen = []
    real = checkpoint.save_checkpoint

    def save_checkpoint(path, model, info):
        lines = (Path(path).parent / "metrics.jsonl").read_text().splitlines()
        seen.append((info.epoch, len(lines)))
        return real(path, model, info)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)
    fit(tiny_config(epochs=2, callbacks=order), host)
    assert seen == [(1, 1), (2, 2)]


def test_resume_keeps_the_line_of_the_epoch_it_redoes(tmp_path):
    lines = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(m) + "\n" for m in lines))
    # killed after epoch 2's checkpoints, before its state: the state holds epoch 1
    run = SimpleNamespace(output_dir=tmp_path, history=[lines[0]])
    callback = builtin.MetricsLog()
    callback.on_fit_start(run)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    redone = {"epoch": 2, "val_acc": 0.8}
    run.history.append(redone)
    callback.on_epoch_end(run, redone)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [lines[0], redone]


# -- SIGTERM to the process group -------------------------------------------------------------


@POSIX
def test_sigterm_to_the_process_group_saves_and_prints_the_resume_line(tmp_path):
    site = write_fake_distribution(tmp_path / "site", "tlcore-tiny-signals", {"tiny": "tlcore.testing:tiny_plugin"})
    data = write_image_folder(tmp_path / "data", per_class=24, size=16)
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "tlcore", "run", "--backbone", "tlcore.testing:tiny", "--dataset", "imagefolder",
        "--data-dir", str(data), "--weights", "none", "--batch-size", "2", "--epochs", "200", "--workers", "2",
        "--pipeline", "loader", "--image-size", "16", "--callbacks", "progress,metrics,checkpoint", "--output", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(site)}
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    try:
        for line in child.stderr:  # wait until the workers are feeding an epoch
            seen.append(line)
            if line.startswith("epoch 1/"):
                break
        time.sleep(0.3)
        os.killpg(child.pid, signal.SIGTERM)  # the whole group: the main process and its DataLoader workers
        rest = child.stderr.read()
        code = child.wait(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    err = "".join(seen) + rest
    assert "Traceback" not in err and "killed by signal" not in err, err
    assert code == 130, err
    assert f"state saved; resume with: tlcore run --resume {out}" in err
    assert load_train_state(out).record["epoch"] >= 1


@POSIX
def test_a_run_frees_its_folder_when_it_ends(host, tiny_config, tmp_path):
    from tlcore import rundir
    from tlcore.train import fit

    result = fit(tiny_config(epochs=1, callbacks="-progress"), host)
    assert result.output_dir.resolve() not in rundir._HELD  # another process may --resume it now
    probe = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(60)", "pass"), str(result.output_dir)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert probe.stdout.strip() == "held"


@POSIX
def test_workers_alive_at_exit_do_not_hang_the_interpreter(tmp_path):
    # the workers ignore SIGTERM from anyone but the process that started them: multiprocessing's
    # terminate() at interpreter exit still ends them
    script = (
        "import torch; from torch.utils.data import TensorDataset; from tlcore.data import make_loader\n"
        "LOADER = make_loader(TensorDataset(torch.zeros(32, 3), torch.zeros(32)), 4, None, 2, pin_memory=False)\n"
        "ITERATOR = iter(LOADER); next(ITERATOR); print('batch', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert done.stdout.strip() == "batch"
