"""Exports: checked against the checkpoint before they are written, and loadable with torch alone."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import tlcore.export as export
from tlcore.errors import ConfigError, PluginError
from tlcore.export import export_checkpoint
from tlcore.inference import load_checkpoint
from tlcore.train import fit


@pytest.fixture
def run(host, tiny_config):
    return fit(tiny_config(epochs=1, callbacks="-progress"), host)


# Runs in a fresh interpreter where importing tlcore fails: the artifacts must need torch only.
WITHOUT_TLCORE = textwrap.dedent(
    """
    import json, sys
    sys.modules["tlcore"] = None  # any import of tlcore now raises ImportError
    import torch
    torch.set_num_threads(1)
    folder = sys.argv[1]
    inputs, expected = torch.load(folder + "/check.pt")
    extra = {"tlcore.json": ""}
    scripted = torch.jit.load(folder + "/best.torchscript.pt", _extra_files=extra)
    program = torch.export.load(folder + "/best.pt2")
    with torch.no_grad():
        outputs = {"torchscript": scripted(inputs), "pt2": program.module()(inputs)}
    print(json.dumps({
        "diff": {name: float((value - expected).abs().max()) for name, value in outputs.items()},
        "classes": json.loads(extra["tlcore.json"])["classes"],
        "tlcore_loaded": any(name.startswith("tlcore") and sys.modules[name] for name in sys.modules),
    }))
    """
)


def test_torchscript_and_pt2_load_without_tlcore(run, host):
    folder = run.output_dir
    results = {fmt: export_checkpoint(folder / "best.safetensors", fmt, host=host) for fmt in ("torchscript", "pt2")}
    assert results["torchscript"].path == folder / "best.torchscript.pt" and results["pt2"].path == folder / "best.pt2"
    for result in results.values():
        assert result.max_abs_diff <= export.ATOL and result.checked_shape == (3, 3, 16, 16)
        sidecar = json.loads(result.sidecar.read_text())
        assert sidecar["classes"] == ["top_left", "bottom_right"] and sidecar["input"]["shape"] == ["batch", 3, 16, 16]
        assert sidecar["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and sidecar["preprocessing"]["resize_to"] == 18
        assert sidecar["verified"]["max_abs_diff"] == result.max_abs_diff
    assert not list(folder.glob(".*.tmp*"))  # no temporary files left behind
    # a batch size never seen during export, against the checkpoint's own model (calibrated: the artifacts divide
    # the logits by the checkpoint's temperature, as predict does)
    predictor = load_checkpoint(folder, device="cpu", host=host)
    inputs = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.save((inputs, predictor.calibrated(inputs)), folder / "check.pt")
    done = subprocess.run([sys.executable, "-c", WITHOUT_TLCORE, str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tlcore_loaded"] is False and report["classes"] == ["top_left", "bottom_right"]
    assert report["diff"]["torchscript"] < 1e-4 and report["diff"]["pt2"] < 1e-4


def test_an_export_that_does_not_match_is_not_written(run, host, monkeypatch):
    exporter, loader = export.EXPORTERS["pt2"]

    def off_by_a_little(path):
        program = loader(path)
        return lambda images: program(images) + 1e-3

    monkeypatch.setitem(export.EXPORTERS, "pt2", (exporter, off_by_a_little))
    with pytest.raises(PluginError, match=r"does not reproduce the checkpoint's logits \(max \|difference\| 1.00e-03"):
        export_checkpoint(run.output_dir, "pt2", host=host)
    assert sorted(p.name for p in run.output_dir.iterdir() if "pt2" in p.name) == []


def test_onnx_without_its_packages_says_what_to_install(run, host, monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name.startswith("onnx") else real(name))
    with pytest.raises(ConfigError, match="install them with: pip install onnx onnxscript onnxruntime"):
        export_checkpoint(run.output_dir, "onnx", host=host)


def test_onnx_export_where_its_packages_are_installed(run, host):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    result = export_checkpoint(run.output_dir, "onnx", host=host)
    assert result.max_abs_diff <= export.ATOL
    metadata = {entry.key: entry.value for entry in onnx.load(str(result.path)).metadata_props}
    assert json.loads(metadata["tlcore.json"])["classes"] == ["top_left", "bottom_right"]


def test_export_options_are_checked(run, host, tmp_path):
    with pytest.raises(ConfigError, match="export format 'tflite' is not accepted; accepted: torchscript, pt2, onnx"):
        export_checkpoint(run.output_dir, "tflite", host=host)
    with pytest.raises(ConfigError, match="is the checkpoint itself"):
        export_checkpoint(run.output_dir, "pt2", output=run.output_dir / "best.safetensors", host=host)
    with pytest.raises(ConfigError, match="folder .*nowhere does not exist"):
        export_checkpoint(run.output_dir, "pt2", output=tmp_path / "nowhere" / "m.pt2", host=host)
    result = export_checkpoint(run.output_dir, "torchscript", output=tmp_path / "model.ts", host=host)
    assert result.path.is_file() and (tmp_path / "model.ts.json").is_file()
