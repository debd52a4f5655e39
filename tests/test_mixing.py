"""--mixup / --cutmix: the mixed batch and its targets by hand, seeding, the loss, resume and bad values."""

import json
import signal

import pytest
import torch

from tests.test_cli import TINY, assert_one_line_error, run_cli
from tlcore.mixing import Mixing
from tlcore.testing import check_resumes_exactly
from tlcore.train import fit


def mixing(**overrides):
    values = dict(mixup=0.4, cutmix=0.0, mix_prob=1.0, switch_prob=0.5, smoothing=0.0, num_classes=3, seed=7)
    values.update(overrides)
    return Mixing(**values)


def test_targets_smooth_the_one_hot_labels_then_mix_them_as_timm_does():
    labels = torch.tensor([0, 1, 2, 1])
    targets = mixing(smoothing=0.1).targets(labels, 0.3)
    off = 0.1 / 3
    on = 1 - 0.1 + off
    # row 0: its own label 0 with 0.3, the reversed batch's label (row 3: 1) with 0.7
    assert targets[0].tolist() == pytest.approx([on * 0.3 + off * 0.7, off * 0.3 + on * 0.7, off])
    # row 1 (label 1) with row 2 (label 2)
    assert targets[1].tolist() == pytest.approx([off, on * 0.3 + off * 0.7, off * 0.3 + on * 0.7])
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0] * 4)


def test_mixup_blends_the_batch_with_its_reverse_and_scores_the_larger_share():
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 0])
    mix = mixing()
    draw = mix.draw(0, 5, 0, 8, 8)
    assert draw.box is None and 0 < draw.lam < 1
    mixed, targets, dominant = mix(images.clone(), labels, 0, 5, 0)
    assert torch.allclose(mixed, images * draw.lam + images.flip(0) * (1 - draw.lam))
    assert torch.allclose(targets, mix.targets(labels, draw.lam))
    assert dominant.tolist() == (labels if draw.lam >= 0.5 else labels.flip(0)).tolist()


def test_cutmix_pastes_a_box_of_the_reversed_batch_and_mixes_labels_by_its_area():
    images = torch.rand(4, 3, 16, 12)
    labels = torch.tensor([0, 1, 2, 0])
    mix = mixing(mixup=0.0, cutmix=1.0)
    for step in range(20):
        draw = mix.draw(1, step, 0, 16, 12)
        top, bottom, left, right = draw.box
        assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 12
        assert draw.lam == pytest.approx(1 - (bottom - top) * (right - left) / (16 * 12))
        mixed, targets, _ = mix(images, labels, 1, step, 0)
        inside = torch.zeros(16, 12, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(mixed[..., inside], images.flip(0)[..., inside])
        assert torch.equal(mixed[..., ~inside], images[..., ~inside])
        assert torch.allclose(targets, mix.targets(labels, draw.lam))


def test_draws_are_keyed_by_position_and_follow_the_probabilities():
    mix = mixing(mixup=0.4, cutmix=1.0)
    assert mix.draw(2, 3, 1, 8, 8) == mix.draw(2, 3, 1, 8, 8)  # no hidden state: a resumed run draws the same
    assert len({mixing().draw(0, step, 0, 8, 8).lam for step in range(10)}) == 10
    assert len({mixing(rank=rank).draw(0, 0, 0, 8, 8).lam for rank in range(4)}) == 4  # processes differ
    assert all(mixing(mixup=0.4, cutmix=1.0, switch_prob=1.0).draw(0, s, 0, 8, 8).box is not None for s in range(10))
    assert all(mixing(mixup=0.4, cutmix=1.0, switch_prob=0.0).draw(0, s, 0, 8, 8).box is None for s in range(10))
    never = mixing(mix_prob=0.0, smoothing=0.2)
    images, labels = torch.rand(2, 3, 4, 4), torch.tensor([0, 2])
    mixed, targets, dominant = never(images, labels, 0, 0, 0)
    assert mixed is images and torch.equal(dominant, labels)
    assert torch.allclose(targets, torch.tensor([[0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3], [0.2 / 3, 0.2 / 3, 0.8 + 0.2 / 3]]))
    share = sum(mixing(mix_prob=0.3).draw(0, s, 0, 8, 8).lam < 1 for s in range(400)) / 400
    assert 0.22 < share < 0.38


def test_the_training_loss_is_the_cross_entropy_against_the_mixed_targets(host, tiny_config, monkeypatch):
    from tlcore import loop

    seen = []
    original = loop.training_targets

    def spy(optim, images, labels, epoch, step, position):
        mixed, targets, scored = original(optim, images, labels, epoch, step, position)
        seen.append((optim.criterion, targets))
        return mixed, targets, scored

    monkeypatch.setattr(loop, "training_targets", spy)
    fit(tiny_config(epochs=1, mixup=0.4, label_smoothing=0.1), host)
    criterion, targets = seen[0]
    assert targets.dtype == torch.float32 and targets.shape[1] == 2 and criterion.label_smoothing == 0.0
    logits = torch.randn(len(targets), 2)
    by_hand = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert criterion(logits, targets) == pytest.approx(float(by_hand), rel=1e-6)


def test_mixing_changes_training_and_is_recorded(host, tiny_config, tmp_path):
    plain = fit(tiny_config(output=str(tmp_path / "plain"), epochs=1), host)
    mixed = fit(tiny_config(output=str(tmp_path / "mixed"), epochs=1, mixup=0.4, cutmix=1.0), host)
    assert plain.history[0]["train_loss"] != mixed.history[0]["train_loss"]
    assert 0 <= mixed.history[0]["train_acc"] <= 1
    saved = json.loads((tmp_path / "mixed" / "config.json").read_text())["config"]
    assert (saved["mixup"], saved["cutmix"], saved["mix_prob"], saved["mix_switch_prob"]) == (0.4, 1.0, 1.0, 0.5)


@pytest.mark.parametrize("pipeline, accumulate", [("memory", 1), ("loader", 2)])
def test_mixing_resumes_bit_identically_mid_epoch(host, tiny_config, tmp_path, pipeline, accumulate):
    settings = dict(epochs=2, mixup=0.4, cutmix=1.0, mix_prob=0.7, label_smoothing=0.1, pipeline=pipeline, workers=0)
    settings["accumulate"] = accumulate
    check_resumes_exactly(host, tiny_config, tmp_path, (1, 3 - accumulate), (signal.SIGINT,), **settings)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--mixup", "-0.1"], ["mixup must be in [0, 100], got -0.1"]),
        (["--cutmix", "1e9"], ["cutmix must be in [0, 100]"]),
        (["--mix-prob", "1.5"], ["mix_prob must be in [0, 1], got 1.5"]),
        (["--mix-switch-prob", "-1"], ["mix_switch_prob must be in [0, 1]"]),
        (["--mixup", "0.2", "--cache-features", "--freeze", "backbone"], ["--cache-features", "--mixup and --cutmix"]),
    ],
)
def test_bad_mixing_options_fail_with_one_line(host, tmp_path, capsys, args, fragments):
    code, _, err = run_cli(["run", *TINY, *args, "--output", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()
