"""What a plugin author meets: the feature-width check, weights without --weights none, listings, plan, data paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import tlcore
from tlcore.errors import PluginError
from tlcore.testing import TINY_BACKBONE, TINY_MULTILABEL_DATASET, shapes_dataset, tiny_backbone

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


class Parts:
    """A plugin with the backbones and datasets these tests need."""

    @tlcore.hookimpl
    def tlcore_register_backbones(self, register):
        def wrong_width(name, options):
            backbone = tiny_backbone(name, options)
            backbone.feature_dim = 12  # the module returns 16
            return backbone

        def no_weights(name, options):
            if options.pretrained:
                raise tlcore.WeightsError(f"{name} has no pretrained weights")
            backbone = tiny_backbone(name, options)
            backbone.extra = {"source": "made in a test", "stages": 3}
            return backbone

        register("author:wrong-width", wrong_width)
        register("author:scratch", no_weights, pretrained=False)

    @tlcore.hookimpl
    def tlcore_register_datasets(self, register):
        def five(name, options):
            data = shapes_dataset(seed=options.seed)
            return tlcore.DatasetSplits(["a", "b", "c", "d", "e"], data.train, data.val)

        def from_folder(name, options):
            if options.data_dir is None or not (options.data_dir / "classes.txt").is_file():
                raise tlcore.DataError(f"dataset {name}: no classes.txt in {options.data_dir}")
            data = shapes_dataset(seed=options.seed)
            return tlcore.DatasetSplits((options.data_dir / "classes.txt").read_text().split(), data.train, data.val)

        register("author:five", five)
        register("author:folder", from_folder)


@pytest.fixture
def parts(tlcore_register):
    tlcore_register(Parts(), "author")


def test_a_backbone_whose_feature_dim_is_wrong_is_refused_before_a_run_folder(parts, tlcore_run, tmp_path):
    output = tmp_path / "never"
    message = (
        "plugin author: backbone author:wrong-width: feature_dim is 12, but its module returns shape (2, 16) for a "
        "(2, 3, 8, 8) input; it must return pooled features (N, feature_dim)"
    )
    with pytest.raises(PluginError, match=re.escape(message)):
        tlcore_run(backbone="author:wrong-width", output=str(output))
    assert not output.exists()


def test_the_feature_check_puts_every_module_mode_back():
    backbone = tiny_backbone()
    backbone.module.train()
    backbone.module[1].eval()  # a frozen stage keeps its statistics
    statistics = backbone.module[0][1].running_mean.clone()
    backbone.check_features()
    assert backbone.module.training and backbone.module[0].training and not backbone.module[1].training
    assert not backbone.module[1][1].training
    assert torch.equal(backbone.module[0][1].running_mean, statistics)  # eval mode: no statistics updated
    backbone.module = nn.Sequential(backbone.module, nn.Unflatten(1, (4, 4)))
    with pytest.raises(PluginError, match=r"returns shape \(2, 4, 4\)"):
        backbone.validate()


def test_a_backbone_registered_without_pretrained_weights_needs_no_weights_none(parts, tlcore_run, capsys):
    result = tlcore_run(backbone="author:scratch", weights="pretrained")
    assert result.history and result.model is not None
    assert (
        "tlcore: notice: backbone author:scratch has no pretrained weights (plugin author offers none), "
        "so it starts from random initialisation, as with --weights none"
    ) in capsys.readouterr().err


def test_info_shows_extra_and_list_shows_offered_weights_and_default_callbacks(parts, tlcore_register, tlcore_cli):
    class Offers:
        @tlcore.hookimpl
        def tlcore_pretrained_weights(self, backbone):
            if backbone == TINY_BACKBONE:
                return tlcore.PretrainedWeights(source="local tiny v2", load=lambda: {})
            return None

    tlcore_register(Offers(), "offers")
    code, out, err = tlcore_cli("info", "author:scratch")
    assert code == 0, err
    assert "extra         source: made in a test\n              stages: 3\n" in out
    code, out, err = tlcore_cli("list", "backbones", "tlcore.testing:*")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["name", "plugin", "pretrained", "offline", "local", "weights", "description"]
    assert row.split()[:5] == [TINY_BACKBONE, "tlcore.testing", "no", "no", "local"] and "local tiny v2" in row
    code, out, err = tlcore_cli("list", "backbones", "tlcore.testing:*", "--pretrained")
    assert TINY_BACKBONE in out  # offered by a plugin counts
    code, out, err = tlcore_cli("list", "callbacks")
    lines = out.splitlines()
    assert lines[0].split() == ["name", "plugin", "default", "description"]
    marks = {line.split()[0]: line.split()[2] for line in lines[1:]}
    assert marks["checkpoint"] == "yes" and marks["progress"] == "yes"


def test_plan_sizes_the_head_for_the_datasets_classes(parts, tlcore_cli):
    code, out, err = tlcore_cli("plan", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", "author:five")
    assert code == 0, err
    assert "(head parameters shown for 5 classes of dataset author:five;" in out
    assert re.search(r"\n  head +85 +85 ", out)  # 16 features x 5 classes + 5 biases
    code, out, err = tlcore_cli("plan", "--backbone", TINY_BACKBONE, "--weights", "none", "--dataset", "author:folder")
    assert code == 0, err
    assert "(head parameters shown for 2 classes: dataset author:folder could not be opened: dataset author:folder:" in out


def test_a_relative_data_dir_is_recorded_absolute_so_eval_works_anywhere(parts, tlcore_run, tmp_path, monkeypatch):
    (tmp_path / "start" / "data").mkdir(parents=True)
    (tmp_path / "start" / "data" / "classes.txt").write_text("left right\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    result = tlcore_run(dataset="author:folder", data_dir="data", output=str(tmp_path / "run"))
    assert result.config.data_dir == str(tmp_path / "start" / "data")
    monkeypatch.chdir(tmp_path / "elsewhere")
    report = tlcore.evaluate_checkpoint(tmp_path / "run", device="cpu")
    assert report.data_dir == str(tmp_path / "start" / "data") and 0 <= report.metrics.accuracy <= 1


def test_every_metrics_key_is_documented_and_epochs_follow_the_rule(tlcore_register, tlcore_run):
    seen = []

    class Watch(tlcore.Callback):
        def on_epoch_end(self, run, metrics):
            seen.append((run.epoch, metrics["epoch"]))

    class Policy(tlcore.FreezePolicy):
        def trainable_groups(self, groups, epoch):
            seen.append(("policy", epoch))
            return groups

    class Plugin:
        @tlcore.hookimpl
        def tlcore_register_callbacks(self, register):
            register("author:watch", lambda config: Watch())

        @tlcore.hookimpl
        def tlcore_register_freeze_policies(self, register):
            register("author:all", lambda options: Policy())

    tlcore_register(Plugin(), "author")
    result = tlcore_run(epochs=2, callbacks="+author:watch", freeze="author:all")
    assert [item for item in seen if item[0] != "policy"] == [(0, 1), (1, 2)]  # run.epoch 0-based, metrics from 1
    assert {epoch for kind, epoch in seen if kind == "policy"} == {0, 1}
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("`metrics`, given to `on_epoch_end`") : text.index("#### Epoch numbers")]
    documented = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in table.splitlines() if "|" in line)))
    # keys that only some options add (--ema, --clip-grad, --task multilabel) come from runs with those options on
    optional = tlcore_run(epochs=1, ema=0.9, clip_grad=1.0)
    multilabel = tlcore_run(epochs=1, ema=0.9, task="multilabel", dataset=TINY_MULTILABEL_DATASET)
    assert set(result.history[0]) <= documented
    assert set(result.history[0]) | set(optional.history[0]) | set(multilabel.history[0]) == documented - {"key"}
