"""Scale-out with torch.distributed: two CPU processes (gloo) through torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlcore.resume import load_train_state
from tlcore.testing import write_fake_distribution

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not found")

SCRIPT = """
import json, os, sys, torch
from tlcore.config import build_config
from tlcore.plugins import reset_host
from tlcore.testing import TinyPlugin
from tlcore.train import fit

torch.set_num_threads(1)
host = reset_host(load_installed=False)
host.register(TinyPlugin(), "tiny")
config = build_config(overrides=dict(backbone="tlcore.testing:tiny", dataset="tlcore.testing:shapes", weights="none",
                                     epochs=3, batch_size=4,
                                     freeze="gradual", unfreeze_start=1, output=sys.argv[1], callbacks=["-progress"],
                                     **json.loads(sys.argv[3])))
result = fit(config, host)
torch.save(result.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


def torchrun(*args, env=None):
    command = [str(TORCHRUN) if TORCHRUN.exists() else "torchrun", "--standalone", "--nproc-per-node", "2", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=full_env)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"accumulate": 2, "pipeline": "loader", "workers": 0},
        {"mixup": 0.4, "cutmix": 1.0, "ema": 0.9, "clip_grad": 0.5, "lr": "auto"},
    ],
    ids=["memory-pipeline", "accumulate-2-loader-pipeline", "mixing-ema-clipping-lr-auto"],
)
def test_two_processes_end_with_identical_weights_across_unfreezing(tmp_path, options):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    done = torchrun(str(script), str(out), str(tmp_path), json.dumps(options))
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]  # one writer: one line per epoch
    assert lines[1]["trainable_groups"] == ["stage2"]
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["train_images"] == 36
    assert config["resolved"]["effective_batch"] == 4 * 2 * options.get("accumulate", 1)
    assert config["resolved"]["pipeline"] == options.get("pipeline", "memory")
    if "ema" in options:  # every process validated the average and clipped; they trained at rank 0's suggestion
        assert all("ema_val_acc" in m and m["grad_norm"] > 0 for m in lines)
        assert config["config"]["lr"] == "auto" and config["resolved"]["lr"] == config["resolved"]["lr_find"]["suggestion"]


def test_torchrun_dash_m_tlcore_run(tmp_path):
    site = write_fake_distribution(tmp_path / "site", "tlcore-tiny-example", {"tiny": "tlcore.testing:tiny_plugin"})
    out = tmp_path / "run"
    done = torchrun(
        "-m",
        "tlcore",
        "run",
        "--backbone",
        "tlcore.testing:tiny",
        "--dataset",
        "tlcore.testing:shapes",
        "--weights",
        "none",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--output",
        str(out),
        env={"PYTHONPATH": str(site), "TLCORE_PLUGINS": "tiny"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "best.safetensors").exists()
    assert done.stderr.count("writing ") == 1  # only rank 0 prints and writes


FAULT_ON_RANK_ONE = """
import json, os, signal, sys, torch
from torch import nn
import tlcore
from tlcore import distributed
from tlcore.config import build_config
from tlcore.interrupt import RunInterrupted
from tlcore.plugins import reset_host
from tlcore.testing import TinyPlugin
from tlcore.train import fit

FAULT, AT_CALL = sys.argv[3], int(sys.argv[4])


class FaultOnRankOne(nn.Module):
    # a linear head that, at its AT_CALL-th training forward and on rank 1 only, returns NaN logits (FAULT "nan")
    # or sends SIGTERM to its own process (FAULT "sigterm")
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc, self.calls = nn.Linear(in_features, num_classes), 0

    def forward(self, x):
        self.calls += self.training
        logits = self.fc(x)
        if self.training and self.calls == AT_CALL and os.environ["RANK"] == "1":
            if FAULT == "nan":
                return logits * float("nan")
            os.kill(os.getpid(), signal.SIGTERM)
        return logits


class FaultPlugin:
    @tlcore.hookimpl
    def tlcore_register_heads(self, register):
        register("test:fault-rank1", lambda in_features, num_classes, options: FaultOnRankOne(in_features, num_classes))


torch.set_num_threads(1)
distributed.STOP_CHECK_STEPS = 4
host = reset_host(load_installed=False)
host.register(TinyPlugin(), "tiny")
host.register(FaultPlugin(), "fault")
config = build_config(overrides=dict(backbone="tlcore.testing:tiny", dataset="tlcore.testing:shapes", weights="none",
                                     batch_size=4,
                                     head="test:fault-rank1", output=sys.argv[1], callbacks=["-progress"],
                                     **json.loads(sys.argv[5])))
try:
    result = fit(config, host)
except RunInterrupted as interrupted:
    print(interrupted, flush=True)
else:
    torch.save(result.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


def fault_on_rank_one(tmp_path, fault: str, at_call: int, options: dict):
    """torchrun two processes of FAULT_ON_RANK_ONE; the run folder is tmp_path / "run"."""
    script = tmp_path / "fault_fit.py"
    script.write_text(FAULT_ON_RANK_ONE)
    return torchrun(str(script), str(tmp_path / "run"), str(tmp_path), fault, str(at_call), json.dumps(options))


def test_a_step_skipped_on_one_process_is_skipped_on_all(tmp_path):
    # without agreement, rank 0 would wait in backward for gradients rank 1 never sends
    done = fault_on_rank_one(tmp_path, "nan", 3, {"epochs": 2, "skip_nonfinite": True})
    out = tmp_path / "run"
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert all(torch.isfinite(value).all() for value in rank0.values() if value.is_floating_point())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["nonfinite_batches"] for m in lines] == [1, 1]  # rank 0 writes; its own losses were all finite


def test_a_wholly_unreadable_batch_on_one_process_stops_with_one_line(tmp_path):
    pytest.importorskip("tlcore_datasets")
    from tlcore.testing import write_image_folder

    data = write_image_folder(tmp_path / "images", per_class=4, size=20)
    (data / "train" / "ants" / "ants_0.jpg").write_bytes(b"not a jpeg at all")
    site = write_fake_distribution(tmp_path / "site", "tlcore-tiny-example", {"tiny": "tlcore.testing:tiny_plugin"})
    done = torchrun(
        *("-m", "tlcore", "run", "--backbone", "tlcore.testing:tiny", "--dataset", "imagefolder", "--data-dir", str(data)),
        *("--image-size", "16", "--weights", "none", "--epochs", "1", "--batch-size", "1", "--workers", "0"),
        *("--output", str(tmp_path / "run")),
        env={"PYTHONPATH": str(site), "TLCORE_PLUGINS": "tiny,datasets"},
    )
    assert done.returncode != 0  # instead of the other process waiting for gradients that never come
    errors = [line for line in done.stderr.splitlines() if line.startswith("tlcore: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "a distributed run cannot skip a whole batch" in errors[0] and "ants_0.jpg" in errors[0]


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    # 5 steps an epoch per process; rank 1 is signalled in step 6, and processes agree every 4 steps: all stop after 8
    done = fault_on_rank_one(tmp_path, "sigterm", 6, {"epochs": 3})
    out = tmp_path / "run"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("interrupted by") == 2, done.stdout
    assert done.stdout.count("at epoch 2, step 3 of 5; state saved") == 2, done.stdout
    assert load_train_state(out).record["step"] == 8
