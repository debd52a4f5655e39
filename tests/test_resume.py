"""Exact resume after Ctrl-C or SIGTERM, across an unfreezing milestone, with the same weights and metrics."""

import json
import signal

import pytest
import torch

from tlcore.checkpoint import read_checkpoint
from tlcore.interrupt import RunInterrupted
from tlcore.testing import SIGNAL_CALLBACK, signal_plugin, without_measurements
from tlcore.train import fit, resume

timeless = without_measurements


# gradual unfreezing from epoch 2, dropout in the head and augmentation: every source of state is exercised
SETTINGS = dict(
    freeze="gradual",
    unfreeze_start=1,
    epochs=3,
    head="mlp",
    head_hidden=8,
    head_dropout=0.3,
    augment="standard",
    schedule="onecycle",
    batch_size=8,
)


@pytest.mark.parametrize("stop_at", [(1, 2), (1, 5), (2, 1)], ids=["mid-epoch", "before-validation", "after-milestone"])
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_matches_the_uninterrupted_run(host, tiny_config, tmp_path, stop_at, signal_number):
    whole = fit(tiny_config(output=str(tmp_path / "whole"), **SETTINGS), host)
    host.register(signal_plugin(*stop_at, signals=(signal_number,)), "signal")
    config = tiny_config(output=str(tmp_path / "cut"), callbacks=["+" + SIGNAL_CALLBACK], **SETTINGS)
    with pytest.raises(
        RunInterrupted,
        match=rf"at epoch {stop_at[0] + 1}, step {stop_at[1]} of 5; state saved; "
        rf"resume with: tlcore run --resume {tmp_path / 'cut'}",
    ):
        fit(config, host)
    host.unregister("signal")
    host.register(signal_plugin(-1, -1), "signal")  # the resumed run asks for the same callbacks
    resumed = resume(tmp_path / "cut", host)
    assert timeless(resumed.history) == timeless(whole.history)
    a, _ = read_checkpoint(whole.output_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (resumed.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]


def test_cli_interrupt_then_resume(host, tiny_config, tmp_path, capsys):
    from tests.test_cli import TINY, run_cli

    host.register(signal_plugin(0, 2), "signal")
    out = tmp_path / "run"
    args = ["run", *TINY, "--epochs", "2", "--callbacks", "+" + SIGNAL_CALLBACK, "--output", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 130 and "Traceback" not in err
    assert (
        f"tlcore: interrupted by SIGINT at epoch 1, step 2 of 5; state saved; resume with: tlcore run --resume {out}" in err
    )
    code, _, err = run_cli(["run", "--resume", str(out), "--epochs", "5"], capsys)
    assert code == 2 and "give no other options with it" in err
    code, _, err = run_cli(["run", "--resume", str(out)], capsys)
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    code, _, err = run_cli(["run", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "holds no train_state.safetensors" in err


def test_second_ctrl_c_stops_at_once(host, tmp_path, capsys):
    from tests.test_cli import TINY, run_cli

    host.register(signal_plugin(0, 1, signals=(signal.SIGINT, signal.SIGINT)), "signal")
    code, _, err = run_cli(["run", *TINY, "--callbacks", "+" + SIGNAL_CALLBACK, "--output", str(tmp_path / "r")], capsys)
    assert code == 130 and err.strip().splitlines()[-1] == "tlcore: interrupted" and "Traceback" not in err, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are put back


def test_a_state_saved_without_fp16_resumes_under_fp16(host, tiny_config, tmp_path, monkeypatch):
    # a run started on a bf16 GPU (no gradient scaler) and resumed on one that needs fp16 (with one)
    host.register(signal_plugin(1, 2), "signal")
    with pytest.raises(RunInterrupted):
        fit(tiny_config(output=str(tmp_path / "cut"), callbacks=["+" + SIGNAL_CALLBACK], epochs=2), host)
    host.unregister("signal")
    host.register(signal_plugin(-1, -1), "signal")
    monkeypatch.setattr("tlcore.train.autocast_dtype", lambda device, enabled, backbone=None: torch.float16)
    resumed = resume(tmp_path / "cut", host)
    assert [m["epoch"] for m in resumed.history] == [1, 2]
