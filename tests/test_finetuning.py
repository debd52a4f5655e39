"""Freeze policies, discriminative learning rates, schedules across unfreezing, the feature cache, class balance."""

import pytest
import torch

import tlcore
from tlcore import feature_cache
from tlcore.callbacks import Callback
from tlcore.checkpoint import read_checkpoint
from tlcore.config import build_config
from tlcore.errors import ConfigError
from tlcore.freeze import FreezeFirst, GradualUnfreeze, policy_phases
from tlcore.optim import lr_multiplier, parameter_groups
from tlcore.testing import TINY_BACKBONE, shapes_dataset, tiny_backbone
from tlcore.train import fit

GROUPS = ["stem", "stage1", "stage2"]


def test_partial_policy_by_name_and_count():
    assert FreezeFirst("stage1").trainable_groups(GROUPS, 0) == ["stage2"]
    assert FreezeFirst("1").trainable_groups(GROUPS, 5) == ["stage1", "stage2"]
    with pytest.raises(ConfigError, match="'layer9' is not a layer group of this backbone; it has: stem, stage1, stage2"):
        FreezeFirst("layer9").trainable_groups(GROUPS, 0)
    with pytest.raises(ConfigError, match="--freeze-to 4 is out of range: this backbone has 3 layer groups"):
        FreezeFirst("4").trainable_groups(GROUPS, 0)


def test_gradual_policy_unfreezes_from_the_top_on_schedule():
    phases = policy_phases(GradualUnfreeze(start=2, every=2), GROUPS, 9)
    assert [(p.first_epoch, p.trainable) for p in phases] == [
        (0, ()),
        (2, ("stage2",)),
        (4, ("stage1", "stage2")),
        (6, ("stem", "stage1", "stage2")),
    ]


class StepRecorder(Callback):
    """Records, per step, each optimizer group's rate and which parameters the groups hold."""

    def __init__(self):
        self.rates, self.members = [], []

    def on_train_batch_end(self, run):
        self.rates.append([group["lr"] for group in run.optimizer.param_groups])
        self.members.append([tuple(id(p) for p in group["params"]) for group in run.optimizer.param_groups])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_unfreezing_keeps_optimizer_groups_and_schedule(host, tiny_config, schedule):
    recorders = []

    class RecorderPlugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("test:steps", lambda config: recorders.append(StepRecorder()) or recorders[-1])

    host.register(RecorderPlugin(), "steps")
    config = tiny_config(
        freeze="gradual",
        unfreeze_start=1,
        epochs=4,
        schedule=schedule,
        warmup_epochs=1,
        layer_decay=0.5,
        callbacks=["+test:steps"],
    )
    result = fit(config, host)
    assert [m["trainable_groups"] for m in result.history] == [[], ["stage2"], ["stage1", "stage2"], GROUPS]
    recorder = recorders[0]
    assert all(members == recorder.members[0] for members in recorder.members)  # never re-grouped
    steps_per_epoch = len(recorder.rates) // 4
    multiplier = lr_multiplier(config, steps_per_epoch)
    scales = [0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]  # stem..stage2 (decay, no decay) then head
    for step, rates in enumerate(recorder.rates):  # the rate after each step is the schedule's, unbroken
        expected = [config.lr * scale * multiplier(step + 1) for scale in scales[-len(rates) :]]
        assert rates == pytest.approx(expected, rel=1e-6), step


def test_layer_decay_and_explicit_multipliers():
    backbone = tiny_backbone()
    head = torch.nn.Linear(16, 2)
    config = build_config(overrides=dict(backbone=TINY_BACKBONE, layer_decay=0.5, lr_mults="stem=0,head=2", lr=0.1))
    rates = {group["name"]: group["lr"] for group in parameter_groups(backbone, head, config)}
    assert rates == {"stem": 0.0, "stage1": pytest.approx(0.025), "stage2": pytest.approx(0.05), "head": pytest.approx(0.2)}
    with pytest.raises(ConfigError, match="'layer4', which is not a layer group of this backbone; it has: stem"):
        parameter_groups(backbone, head, build_config(overrides=dict(lr_mults="layer4=0.1")))


def test_norm_policy_trains_only_norm_layers(host, tiny_config):
    result = fit(tiny_config(freeze="norm", epochs=1), host)
    torch.manual_seed(0)  # fit seeds with 0 before building the backbone: the same initial weights
    initial = {f"backbone.{k}": v for k, v in tiny_backbone().module.state_dict().items()}
    saved, _ = read_checkpoint(result.output_dir / "last.safetensors")
    conv_keys = [k for k in initial if saved[k].ndim == 4]
    norm_keys = [k for k in initial if k.endswith(".1.weight") or k.endswith(".1.bias")]
    assert len(conv_keys) == 3 and len(norm_keys) == 6
    assert all(torch.equal(saved[k], initial[k]) for k in conv_keys)
    assert not any(torch.equal(saved[k], initial[k]) for k in norm_keys)
    assert result.history[0]["trainable_groups"] == GROUPS


def test_cached_features_match_the_slow_path(host, tiny_config, tmp_path, monkeypatch):
    common = dict(freeze="backbone", augment="none", epochs=3, head="mlp", head_hidden=8, head_dropout=0.0)
    slow = fit(tiny_config(output=str(tmp_path / "slow"), **common), host)
    fast = fit(tiny_config(output=str(tmp_path / "fast"), cache_features=True, **common), host)
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 0)  # force the spill to a file
    spilled = fit(tiny_config(output=str(tmp_path / "spill"), cache_features=True, **common), host)
    for other in (fast, spilled):
        for a, b in zip(slow.history, other.history, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
            assert a["val_acc"] == b["val_acc"]
        slow_w, _ = read_checkpoint(slow.output_dir / "last.safetensors")
        other_w, _ = read_checkpoint(other.output_dir / "last.safetensors")
        assert all(torch.allclose(slow_w[k], other_w[k], atol=1e-5) for k in slow_w)
    assert not (spilled.output_dir / ".feature-cache").exists() or not any((spilled.output_dir / ".feature-cache").iterdir())


def test_cached_features_refuse_what_would_change_the_backbone(host, tiny_config):
    with pytest.raises(ConfigError, match="trains stem, stage1, stage2 from epoch 1"):
        fit(tiny_config(cache_features=True), host)
    with pytest.raises(ConfigError, match="trains stage2 from epoch 2"):
        fit(tiny_config(cache_features=True, freeze="gradual", epochs=3), host)
    with pytest.raises(ConfigError, match="needs --bn-mode frozen"):
        fit(tiny_config(cache_features=True, freeze="backbone", bn_mode="train"), host)


def test_cache_fingerprint_is_checked():
    cache = feature_cache.CachedFeatures(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), key="abc")
    cache.check("abc")
    with pytest.raises(RuntimeError, match="fingerprint mismatch"):
        cache.check("other backbone")
    assert feature_cache.fingerprint({"image_size": 64}) != feature_cache.fingerprint({"image_size": 96})


class ImbalancedPlugin:
    @tlcore.hookimpl
    def tlcore_register_datasets(self, register):
        def imbalanced(name, options):
            data = shapes_dataset(num_per_class=40, seed=options.seed)
            keep = [i for i, label in enumerate(data.train.labels.tolist()) if label == 0 or i % 4 == 0]
            data.train = tlcore.TensorImageDataset(data.train.images[keep], data.train.labels[keep])
            return data

        register("test:imbalanced", imbalanced)


def test_class_weights_auto_and_given(host, tiny_config):
    import json

    host.register(ImbalancedPlugin(), "imbalanced")
    result = fit(tiny_config(dataset="test:imbalanced", class_weights="auto", epochs=1), host)
    weights = json.loads((result.output_dir / "config.json").read_text())["resolved"]["class_weights"]
    labels = host.catalog("datasets").resolve("test:imbalanced").factory("x", tlcore.DatasetOptions()).train.labels
    counts = torch.bincount(labels).tolist()
    assert weights == pytest.approx([len(labels) / (2 * c) for c in counts]) and weights[1] > 2 * weights[0]
    with pytest.raises(ConfigError, match="class_weights needs 2 non-negative numbers"):
        fit(tiny_config(dataset="test:imbalanced", class_weights="1,2,3", output=str(result.output_dir) + "x"), host)


def test_balanced_sampler_draws_classes_equally():
    from tlcore.balance import balanced_weights
    from tlcore.data import EpochSampler

    labels = torch.tensor([0] * 90 + [1] * 10)
    drawn = labels[[index for _, index in EpochSampler(100, seed=0, weights=balanced_weights(labels, 2))]]
    assert 35 <= int((drawn == 1).sum()) <= 65  # about half, against 10% in the data


def test_plan_prints_groups_per_phase(host, capsys):
    from tests.test_cli import run_cli

    code, out, err = run_cli(
        [
            "plan",
            "--backbone",
            "tlcore.testing:tiny",
            "--weights",
            "none",
            "--freeze",
            "gradual",
            "--epochs",
            "3",
            "--layer-decay",
            "0.5",
        ],
        capsys,
    )
    assert code == 0, err
    assert "epoch 1:" in out and "epoch 2:" in out and "epoch 3:" in out
    first = out.split("epoch 2:")[0]
    assert "stage2" in first and " no " in first and "eval" in first
    code, _, err = run_cli(
        ["plan", "--backbone", "tlcore.testing:tiny", "--freeze", "partial", "--freeze-to", "layer3"], capsys
    )
    assert code == 2 and "not a layer group of this backbone; it has: stem, stage1, stage2" in err


def test_epoch_sampler_shares_are_equal_and_counted_without_drawing():
    from tlcore.data import EpochSampler

    # more processes than twice the images: every process still takes as many keys (wrapping around)
    shares = [list(EpochSampler(3, seed=1, rank=r, world_size=8)) for r in range(8)]
    assert {len(share) for share in shares} == {1}
    assert {index for share in shares for _, index in share} == {0, 1, 2}
    uneven = EpochSampler(10, 0, shuffle=False, rank=2, world_size=3, even=False)
    for sampler in (EpochSampler(10, 0, rank=1, world_size=3), uneven):
        sampler.set_epoch(4, start=1)
        assert len(sampler) == len(list(sampler))
