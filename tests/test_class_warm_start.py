"""A class added later: --weights EARLIER_RUN keeps the head rows of the classes it knows, by name."""

from __future__ import annotations

import json

import pytest
import torch

import tlcore
from tlcore.build import build_head, reuse_checkpoint_head
from tlcore.checkpoint import read_checkpoint
from tlcore.testing import shapes_dataset
from tlcore.train import fit
from tlcore.weights import read_weights_file


def renamed(classes):
    class Plugin:
        @tlcore.hookimpl
        def tlcore_register_datasets(self, register):
            def factory(name, options):
                data = shapes_dataset(seed=options.seed)
                data.classes = list(classes)
                return data

            register("test:later", factory)

    return Plugin()


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_known_rows_are_kept_bit_for_bit_and_new_ones_fresh(host, tiny_config, tmp_path, head):
    first = fit(tiny_config(output=str(tmp_path / "a"), epochs=1, head=head, head_hidden=8, callbacks="-progress"), host)
    earlier, _ = read_checkpoint(first.output_dir / "best.safetensors")
    config = tiny_config(weights=str(first.output_dir), head=head, head_hidden=8, output=str(tmp_path / "b"))
    classes = ["new_one", "bottom_right", "top_left"]  # another order, one class more
    torch.manual_seed(5)
    fresh = build_head(config, host, 16, 3)
    torch.manual_seed(5)
    warmed = build_head(config, host, 16, 3)
    reuse = reuse_checkpoint_head(config, warmed, classes, read_weights_file(first.output_dir / "best.safetensors"))
    assert reuse.kept == ["bottom_right", "top_left"] and reuse.new == ["new_one"] and reuse.removed == []
    last = "4" if head == "mlp" else "0"
    state, fresh_state = warmed.state_dict(), fresh.state_dict()
    for key in (f"{last}.weight", f"{last}.bias"):
        old = earlier[f"head.{key}"]
        assert torch.equal(state[key][1], old[1]) and torch.equal(state[key][2], old[0])  # bit-identical, by name
        assert torch.equal(state[key][0], fresh_state[key][0])  # the new class: the fresh initialisation
    if head == "mlp":  # the hidden layer as it was
        assert torch.equal(state["1.weight"], earlier["head.1.weight"])


def test_a_run_says_which_classes_it_kept(host, tiny_config, tmp_path, capsys):
    first = fit(tiny_config(output=str(tmp_path / "a"), epochs=1, callbacks="-progress"), host)
    host.register(renamed(["top_left", "lower_right", "extra"]), "later")  # one renamed, one new
    config = tiny_config(output=str(tmp_path / "b"), dataset="test:later", weights=str(first.output_dir), epochs=1)
    second = fit(config, host)
    resolved = json.loads((second.output_dir / "config.json").read_text())["resolved"]
    assert resolved["head_from_checkpoint"] is True
    assert resolved["head_classes"]["kept"] == ["top_left"]
    assert resolved["head_classes"]["new"] == ["lower_right", "extra"]
    assert resolved["head_classes"]["removed"] == ["bottom_right"]
    err = capsys.readouterr().err
    assert "kept the rows of 1 classes" in err and "removed or renamed): bottom_right" in err


def test_no_class_in_common_starts_fresh_and_says_why(host, tiny_config, tmp_path):
    first = fit(tiny_config(output=str(tmp_path / "a"), epochs=1, callbacks="-progress"), host)
    config = tiny_config(weights=str(first.output_dir))
    head = build_head(config, host, 16, 2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    reuse = reuse_checkpoint_head(config, head, ["x", "y"], read_weights_file(first.output_dir / "best.safetensors"))
    assert not reuse.reused and "none of its 2 classes" in reuse.reason
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
