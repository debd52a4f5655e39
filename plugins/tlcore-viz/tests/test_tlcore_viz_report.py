"""The viz callbacks and `tlcore report`: valid PNGs in the run folder, one self-contained report.html."""

import base64
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tlcore_viz import plots
from tlcore_viz.callbacks import Curves
from tlcore_viz.report import build_report

from tlcore.errors import DataError
from tlcore.evaluation import evaluate_checkpoint
from tlcore.train import fit

PICTURES = ("curves.png", "confusion.png", "predictions.png", "top_losses.png", "reliability.png", "coverage.png")


def open_png(path):
    with Image.open(path) as image:
        image.verify()  # a truncated or corrupt PNG fails here
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_a_run_writes_every_picture_and_the_report(finished_run, viz_host):
    folder = finished_run.output_dir
    sizes = {name: open_png(folder / name) for name in PICTURES}
    assert sizes["curves.png"] == (1200, 360) and all(w >= 300 and h >= 300 for w, h in list(sizes.values())[1:])
    page = (folder / "report.html").read_text(encoding="utf-8")
    for name in PICTURES:  # the very bytes of each file, inlined
        assert f"src='data:image/png;base64,{base64.b64encode((folder / name).read_bytes()).decode()}'" in page
    assert "<script" not in page and "http" not in page  # self-contained: nothing to fetch
    best = max(finished_run.history, key=lambda m: m["val_acc"])
    assert f"{best['epoch']}: val_acc {best['val_acc']:.4f}, val_loss {best['val_loss']:.4f}" in page
    evaluation = evaluate_checkpoint(folder / "best.safetensors", device="cpu", host=viz_host)
    metrics = evaluation.metrics
    assert f"{metrics.accuracy:.4f} ({metrics.correct}/{metrics.images})" in page
    for row in metrics.per_class:
        assert f"<tr><td>{row['class']}</td><td class='n'>{row['precision']:.4f}</td>" in page
    assert "<tr><th>backbone</th><td>tlcore.testing:tiny</td></tr>" in page and "<tr><th>lr</th><td>0.003</td></tr>" in page
    config = json.loads((folder / "config.json").read_text())
    # after the built-ins of order 0; the model card (order 10) comes last
    assert config["resolved"]["callbacks"][-3:] == ["viz_curves", "viz_report", "model_card"]


def test_report_command_rebuilds_a_finished_run(finished_run, viz_cli, capsys):
    folder = finished_run.output_dir
    for name in (*PICTURES, "report.html"):
        (folder / name).unlink()
    code, out, err = viz_cli(["report", folder, "--device", "cpu"], capsys)
    assert code == 0, err
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("wrote")] == [
        str(folder / name) for name in (*PICTURES, "report.html")
    ]
    best = max(finished_run.history, key=lambda m: m["val_acc"])
    assert f"val accuracy {best['val_acc']:.4f}" in out  # eval of best.safetensors = the run's best val_acc
    for name in PICTURES:
        open_png(folder / name)
    code, _, err = viz_cli(["report", folder / "nowhere"], capsys)
    assert code == 2 and err.strip().startswith("tlcore: error: ") and "is not a run folder: it has no config.json" in err
    assert len(err.strip().splitlines()) == 1


def test_without_a_checkpoint_the_model_in_memory_is_reported(viz_host, tiny_run_config):
    result = fit(tiny_run_config(epochs=1, callbacks="-progress,-checkpoint"), viz_host)
    folder = result.output_dir
    assert not (folder / "best.safetensors").exists()
    page = (folder / "report.html").read_text()
    assert "the model in memory (epoch 1) on the val split, 12 images" in page
    open_png(folder / "top_losses.png")
    # a folder with neither checkpoint nor metrics still gets a report, saying what is missing
    (folder / "metrics.jsonl").unlink()
    (folder / "curves.png").unlink()
    done = build_report(folder, device="cpu", host=viz_host)
    assert done.evaluation is None and [p.name for p in done.written] == ["report.html"]
    assert "no checkpoint in the run folder" in (folder / "report.html").read_text()


def test_curves_are_redrawn_after_every_epoch(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.4, "val_acc": 0.5, "lr": 1e-3}]
    Curves().on_epoch_end(SimpleNamespace(output_dir=tmp_path, history=history), history[0])
    first = (tmp_path / "curves.png").read_bytes()
    history.append({"epoch": 2, "train_loss": 0.7, "val_loss": 0.9, "train_acc": 0.6, "val_acc": 0.7, "lr": 5e-4})
    Curves().on_epoch_end(SimpleNamespace(output_dir=tmp_path, history=history), history[1])
    assert (tmp_path / "curves.png").read_bytes() != first
    open_png(tmp_path / "curves.png")


def test_large_confusion_and_any_image_form_render():
    confusion = torch.eye(45, dtype=torch.int64).mul(3).tolist()
    png = plots.confusion_png(confusion, [f"class_{i}" for i in range(45)])
    assert png.startswith(b"\x89PNG")
    big = Image.new("RGB", (1000, 600), "white")
    assert plots.thumbnail(big).shape == (96, 160, 3)
    assert plots.thumbnail(torch.zeros(1, 8, 8, dtype=torch.uint8)).shape == (64, 64, 3)  # 8x8 digits, upscaled
    assert plots.thumbnail(Image.new("I;16", (20, 10))).shape == (30, 60, 3)
    assert plots.thumbnail(torch.rand(3, 10, 10)).dtype.name == "uint8"


def test_not_a_run_folder(tmp_path):
    with pytest.raises(DataError, match="is not a run folder"):
        build_report(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(DataError, match="damaged config.json"):
        build_report(tmp_path)
