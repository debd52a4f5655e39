"""A multi-label run from the command line, then eval, predict and export of its checkpoint (issue 17, item 2)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_multilabel_eval import CLASSES, TagPlugin, write_pictures
from tlcore.checkpoint import read_checkpoint
from tlcore.inference import load_checkpoint


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from more, and tests share the cores
    yield
    torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load, used to read the artifact back
def test_run_then_eval_predict_export(tlcore_cli, tlcore_register, tmp_path, one_thread):
    tlcore_register(TagPlugin(), "tags")
    run = tmp_path / "run"
    trained = tlcore_cli(
        "run", "--task", "multilabel", "--dataset", "test:tags", "--backbone", "tlcore.testing:tiny",
        "--weights", "none", "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--device", "cpu",
        "--workers", "0", "--callbacks", "-progress", "--output", run,
    )  # fmt: skip
    assert trained.code == 0, trained.err
    _, info = read_checkpoint(run / "best.safetensors")
    assert info.task == "multilabel" and len(info.thresholds) == len(CLASSES)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = next(m for m in history if m["epoch"] == info.epoch)

    # eval on the split the run validated on reproduces the epoch's figures
    done = tlcore_cli("eval", "--checkpoint", run, "--device", "cpu", "--workers", "0", "--json")
    assert done.code == 0, done.err
    record = json.loads(done.out)
    assert record["task"] == "multilabel" and record["split"] == "val"
    assert record["map"] == pytest.approx(best["val_map"], abs=1e-6)
    assert record["f1_micro"] == pytest.approx(best["val_f1_micro"], abs=1e-6)
    assert record["f1_macro"] == pytest.approx(best["val_f1_macro"], abs=1e-6)
    assert record["loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    assert [row["threshold"] for row in record["per_class"]] == pytest.approx(info.thresholds)

    # predict: every class at its threshold, as the Python API says
    pictures = write_pictures(tmp_path)
    predicted = tlcore_cli("predict", *pictures, "--checkpoint", run, "--device", "cpu", "--json")
    assert predicted.code == 0, predicted.err
    expected = load_checkpoint(run, "cpu").predict(pictures)
    assert json.loads(predicted.out) == [p.to_dict() for p in expected]

    # export: the artifact's metadata carries the task and thresholds; the run's model card is copied beside it
    exported = tlcore_cli("export", "--checkpoint", run / "best.safetensors", "--format", "torchscript")
    assert exported.code == 0, exported.err
    sidecar = json.loads((run / "best.torchscript.pt.json").read_text())
    assert sidecar["task"] == "multilabel" and sidecar["thresholds"] == pytest.approx(info.thresholds)
    card = run / "best.torchscript.pt.md"
    assert card.is_file() and "sigmoid" in card.read_text()
