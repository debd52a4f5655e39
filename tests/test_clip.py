"""--clip-grad / --clip-mode: clipped gradients, after unscaling under fp16, the mean norm, exact resume, bad values."""

import signal

import pytest
import torch
from torch import nn

from tests.test_cli import TINY, assert_one_line_error, run_cli
from tlcore.checkpoint import read_checkpoint
from tlcore.loop import EpochSums, clip_gradients
from tlcore.optim import Optimisation
from tlcore.testing import check_resumes_exactly
from tlcore.train import fit


def setup(clip, scaler_enabled=False, scale=1.0):
    """A model with large gradients, one frozen parameter; the loss scaled as the fp16 scaler would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_enabled, init_scale=scale)
    optim = Optimisation(optimizer, None, nn.CrossEntropyLoss(), None, scaler, None, clip=clip)
    loss = model(torch.randn(16, 4) * 50).pow(2).mean()
    scaler.scale(loss).backward()
    sums = EpochSums(torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64), 0.0)
    sums.grad_norm_sum, sums.grad_norm_steps = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    return model, optim, sums


def grads(model):
    return [p.grad for p in model.parameters() if p.grad is not None]


def test_norm_mode_clips_the_total_norm_and_records_the_norm_before():
    model, optim, sums = setup(("norm", 1.0))
    before = float(torch.nn.utils.get_total_norm(grads(model)))
    assert before > 10
    clip_gradients(optim, sums)
    assert float(torch.nn.utils.get_total_norm(grads(model))) <= 1.0 + 1e-5
    assert float(sums.grad_norm_sum) == pytest.approx(before, rel=1e-6) and int(sums.grad_norm_steps) == 1
    assert model[0].bias.grad is None  # frozen: no gradient, left alone


def test_value_mode_clips_each_value():
    model, optim, sums = setup(("value", 0.05))
    before = float(torch.nn.utils.get_total_norm(grads(model)))
    clip_gradients(optim, sums)
    assert all(bool((g.abs() <= torch.tensor(0.05)).all()) for g in grads(model))  # 0.05 as float32
    assert max(float(g.abs().max()) for g in grads(model)) == pytest.approx(0.05)  # some were larger
    assert float(sums.grad_norm_sum) == pytest.approx(before, rel=1e-6)


def test_under_fp16_the_true_gradients_are_clipped_after_unscaling():
    reference, _, _ = setup(None)
    true_norm = float(torch.nn.utils.get_total_norm(grads(reference)))
    model, optim, sums = setup(("norm", 1.0), scaler_enabled=True, scale=1024.0)
    clip_gradients(optim, sums)
    assert float(sums.grad_norm_sum) == pytest.approx(true_norm, rel=1e-5)  # the unscaled norm, not 1024x it
    assert float(torch.nn.utils.get_total_norm(grads(model))) <= 1.0 + 1e-5
    optim.scaler.step(optim.optimizer)  # the scaler knows they are unscaled: not divided a second time
    optim.scaler.update()


def test_non_finite_norms_are_left_out_of_the_mean():
    model, optim, sums = setup(("norm", 1.0))
    model[1].weight.grad[0, 0] = float("inf")
    clip_gradients(optim, sums)
    assert float(sums.grad_norm_sum) == 0.0 and int(sums.grad_norm_steps) == 0


def test_clipping_changes_training_and_reports_the_mean_norm(host, tiny_config, tmp_path):
    plain = fit(tiny_config(output=str(tmp_path / "plain"), epochs=1, lr=0.1), host)
    clipped = fit(tiny_config(output=str(tmp_path / "clipped"), epochs=1, lr=0.1, clip_grad=0.01), host)
    assert "grad_norm" not in plain.history[0]
    assert clipped.history[0]["grad_norm"] > 0.01  # before clipping: above the limit
    a, _ = read_checkpoint(plain.output_dir / "last.safetensors")
    b, _ = read_checkpoint(clipped.output_dir / "last.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipping_resumes_bit_identically_mid_epoch(host, tiny_config, tmp_path, mode):
    settings = dict(epochs=2, clip_grad=0.05, clip_mode=mode, accumulate=2)
    whole, resumed = check_resumes_exactly(host, tiny_config, tmp_path, (1, 1), (signal.SIGINT,), **settings)
    assert resumed.history[1]["grad_norm"] == whole.history[1]["grad_norm"]  # the sums carried across the stop


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--clip-grad", "0"], "clip_grad must be positive, got 0.0"),
        (["--clip-grad", "-1"], "clip_grad must be positive, got -1.0"),
        (["--clip-grad", "1", "--clip-mode", "max"], "clip_mode 'max' is not accepted; accepted: norm, value"),
    ],
)
def test_bad_clip_options_fail_with_one_line(host, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(["run", *TINY, *args, "--output", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, fragment)
