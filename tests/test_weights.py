"""Weights files: safetensors, torch files read safely, folders, runs, and clear mismatches."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from tlcore.errors import WeightsError
from tlcore.testing import tiny_backbone
from tlcore.weights import PretrainedWeights, backbone_tensors, load_into_backbone, read_weights_file


def state():
    return {k: v.clone() for k, v in tiny_backbone().module.state_dict().items()}


def test_pth_and_safetensors_and_folder_load(tmp_path):
    weights = state()
    torch.save({"state_dict": weights}, tmp_path / "w.pth")
    read = read_weights_file(tmp_path / "w.pth")
    assert read.tlcore_meta is None and torch.equal(read.tensors["0.0.weight"], weights["0.0.weight"])
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    backbone = tiny_backbone()
    summary = load_into_backbone(backbone, backbone_tensors(read_weights_file(folder)), "folder")
    assert summary.startswith(f"{len(weights)} tensors loaded")
    assert torch.equal(backbone.module.state_dict()["1.0.weight"], weights["1.0.weight"])


def test_module_prefix_and_extra_classifier_keys_are_accepted(tmp_path):
    weights = {f"module.{k}": v for k, v in state().items()}
    weights["module.fc.weight"] = torch.zeros(1000, 16)
    summary = load_into_backbone(tiny_backbone(), weights, "ddp file")
    assert "1 not used" in summary


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Exploit()}, handle, protocol=2)
    with pytest.raises(WeightsError, match="not a weights file that loads safely"):
        read_weights_file(path)
    assert not marker.exists()


def test_weights_for_another_model_say_how_many_matched(tmp_path):
    other = {"conv.weight": torch.zeros(3, 3), "0.0.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(WeightsError, match=r"1 of 15 tensors matched; not in file: 0\.1\.weight"):
        load_into_backbone(tiny_backbone(), other, "other.pth")
    wrong = state()
    wrong["0.0.weight"] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(WeightsError, match=r"wrong shapes: 0\.0\.weight \(4, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        load_into_backbone(tiny_backbone(), wrong, "wrong.pth")


def test_not_a_weights_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="not a weights file"):
        read_weights_file(tmp_path / "notes.txt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_weights_file(tmp_path / "broken.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights_file(tmp_path / "missing.pth")
    two = tmp_path / "two"
    two.mkdir()
    torch.save(state(), two / "a.pt")
    torch.save(state(), two / "b.pt")
    with pytest.raises(WeightsError, match="exactly one"):
        read_weights_file(two)


def test_digest_is_checked_before_loading(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(state(), path)
    offered = PretrainedWeights(source="x", load=lambda: torch.load(path, weights_only=True), path=path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="has sha256"):
        offered.verified_state_dict()
