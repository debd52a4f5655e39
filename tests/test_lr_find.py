"""tlcore lr-find and --lr auto: the suggestion rule, the ramp through the run's groups, nothing written, config.json."""

import json
import math
import signal

import pytest
import torch

from tests.test_cli import TINY, assert_one_line_error, run_cli
from tlcore import lr_find
from tlcore.checkpoint import read_checkpoint
from tlcore.interrupt import RunInterrupted
from tlcore.testing import SIGNAL_CALLBACK, signal_plugin, without_measurements
from tlcore.train import fit, resume, started_processes


def test_the_suggestion_is_a_tenth_of_the_rate_at_the_lowest_loss_inside_fastais_window():
    rates = [lr_find.rate_at(i, 100) for i in range(100)]
    # a valley at step 60, and a lower point at step 3 (inside the first tenth, which fastai leaves out)
    losses = [2.0 - 1.5 * math.exp(-((i - 60) ** 2) / 50) for i in range(100)]
    losses[3] = 0.1
    losses[97] = 0.05  # and inside the last five
    suggestion, rate, loss = lr_find.suggest(rates, losses)
    assert rate == rates[60] and loss == losses[60] and suggestion == pytest.approx(rates[60] / 10)
    # too few points to trim: all count; non-finite losses never do
    assert lr_find.suggest([1e-3, 1e-2, 1e-1], [1.0, 0.5, math.nan]) == pytest.approx((1e-3, 1e-2, 0.5))
    assert lr_find.suggest([1e-3], [math.inf]) is None


def test_the_ramp_is_exponential_from_start_to_end():
    assert lr_find.rate_at(0, 100) == pytest.approx(1e-7)
    assert lr_find.rate_at(100, 100) == pytest.approx(10.0)
    assert lr_find.rate_at(50, 100) == pytest.approx(math.sqrt(1e-7 * 10))


def test_the_test_keeps_the_groups_ratios_and_stops_when_the_loss_diverges(host, tiny_config, monkeypatch):
    seen = []
    original = lr_find.optimizer_step

    def spy(optim, *, backward, sums=None):
        seen.append([(group["lr"], group["lr_scale"]) for group in optim.optimizer.param_groups])
        return original(optim, backward=backward, sums=sums)

    monkeypatch.setattr(lr_find, "optimizer_step", spy)
    config = tiny_config(layer_decay=0.5, lr="auto")
    with started_processes(config) as (world, device):
        finding = lr_find.find_lr(config, host, world, device, start_lr=1e-4, end_lr=1e4, steps=40)
    assert len(seen) == len(finding.rates) <= 40
    scales = {scale for _, scale in seen[0]}
    assert scales == {0.125, 0.25, 0.5, 1.0}  # layer decay over stem, stage1, stage2; the head at 1
    for step, groups in enumerate(seen):
        for rate, scale in groups:
            assert rate == pytest.approx(lr_find.rate_at(step, 40, 1e-4, 1e4) * scale)
    assert finding.stopped and len(finding.rates) < 40  # 1e4 diverges well before the end
    assert finding.losses[-1] > 4 * min(finding.losses) or not math.isfinite(finding.losses[-1])
    assert finding.suggestion == pytest.approx(finding.minimum_rate / 10)


def test_lr_find_prints_a_suggestion_and_writes_nothing(host, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["lr-find", *TINY, "--steps", "12", "--epochs", "1"], capsys)
    assert code == 0, err
    assert "lr-find: 12 steps, lr 1.00e-07 to" in out and "suggested lr" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no runs/, nothing


def test_lr_find_draws_the_curve_with_tlcore_viz(host, tmp_path, capsys):
    pytest.importorskip("tlcore_viz")
    target = tmp_path / "curve.png"
    code, out, err = run_cli(["lr-find", *TINY, "--steps", "8", "--plot", str(target)], capsys)
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"curve drawn to {target}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_plot_without_tlcore_viz_fails_with_one_line(host, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tlcore_viz" else real(name, *a))
    code, _, err = run_cli(["lr-find", *TINY, "--plot", str(tmp_path / "c.png")], capsys)
    assert_one_line_error(code, err, "--plot draws with tlcore-viz, which is not installed")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["lr-find", "--steps", "1"], "lr-find --steps must be in [2, 10000], got 1"),
        (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "lr-find needs 0 < --start-lr < --end-lr"),
        (["lr-find", "--start-lr", "0"], "lr-find needs 0 < --start-lr < --end-lr"),
        (["lr-find", "--plot", "/no/such/folder/c.png"], "folder /no/such/folder does not exist"),
        (["run", "--lr", "fast"], "option lr must be a number or auto, got 'fast'"),
        (["run", "--lr", "-1"], "lr must be positive, got -1.0"),
    ],
)
def test_bad_lr_find_options_fail_with_one_line(host, tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*args, *TINY, "--output", str(tmp_path / "r")] if args[0] == "run" else [*args, *TINY], capsys)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_lr_auto_trains_at_the_suggestion_and_records_both(host, tiny_config, tmp_path):
    auto = fit(tiny_config(output=str(tmp_path / "auto"), lr="auto", epochs=1), host)
    record = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert record["config"]["lr"] == "auto"
    used = record["resolved"]["lr"]
    assert isinstance(used, float) and used == record["resolved"]["lr_find"]["suggestion"]
    assert record["resolved"]["lr_find"]["rule"].startswith("minimum/10")
    assert auto.config.lr == used
    # the same run at that rate given outright is the same run: the test leaves no trace in the generators
    given = fit(tiny_config(output=str(tmp_path / "given"), lr=used, epochs=1), host)
    assert without_measurements(given.history) == without_measurements(auto.history)


def test_an_lr_auto_run_resumes_at_the_rate_it_found(host, tiny_config, tmp_path, monkeypatch):
    settings = dict(lr="auto", epochs=2)
    whole = fit(tiny_config(output=str(tmp_path / "whole"), **settings), host)
    host.register(signal_plugin(1, 2, signals=(signal.SIGINT,)), "signal")
    with pytest.raises(RunInterrupted):
        fit(tiny_config(output=str(tmp_path / "cut"), callbacks=["+" + SIGNAL_CALLBACK], **settings), host)
    host.unregister("signal")
    host.register(signal_plugin(-1, -1), "signal")
    monkeypatch.setattr(lr_find, "find_lr", lambda *a, **k: pytest.fail("a resumed run must not test again"))
    resumed = resume(tmp_path / "cut", host)
    assert without_measurements(resumed.history) == without_measurements(whole.history)
    a, _ = read_checkpoint(whole.output_dir / "last.safetensors")
    b, _ = read_checkpoint(resumed.output_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plan_shows_the_groups_rates_as_multiples_of_the_rate_to_be_found(host, capsys):
    code, out, err = run_cli(["plan", *TINY, "--lr", "auto", "--layer-decay", "0.5"], capsys)
    assert code == 0, err
    assert "lr auto (found by tlcore lr-find before training" in out
    assert [line.split()[4] for line in out.splitlines() if line.strip().startswith(("stem", "head"))] == [
        "1.25e-01",
        "1.00e+00",
    ]


def test_running_out_of_memory_in_the_test_is_one_line(host, tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(lr_find, "_step_loss", exhausted)
    code, _, err = run_cli(["lr-find", *TINY, "--image-size", "16"], capsys)
    assert_one_line_error(code, err, "ran out of memory", "during the LR range test at batch size 8", "--batch-size 4")
