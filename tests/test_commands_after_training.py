"""`tlcore eval`, `predict` and `export` from the command line: tables, --json, one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tlcore import cli
from tlcore.train import fit


def run_cli(args, capsys):
    """Run ``tlcore ARGS`` in-process; returns (exit code, stdout, stderr)."""
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlcore: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run(host, tiny_config):
    return fit(tiny_config(epochs=2, lr=0.05, callbacks="-progress"), host)


def write_images(folder):
    """Two readable images (RGB png, grey jpeg in a subfolder), one broken file, one text file."""
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, (24, 20, 3), dtype=np.uint8)
    pixels[:12, :10] += 180
    Image.fromarray(pixels).save(folder / "corner.png")
    Image.fromarray(pixels[:, :, 0]).save(folder / "sub" / "grey.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_eval_table_and_json(run, capsys):
    best = run.output_dir / "best.safetensors"
    code, out, err = run_cli(["eval", "--checkpoint", best, "--device", "cpu", "--batch-size", "5"], capsys)
    assert code == 0, err
    recorded = max(run.history, key=lambda m: m["val_acc"])  # what best.safetensors holds
    assert f"accuracy    {recorded['val_acc']:.4f}" in out, out
    assert "tlcore.testing:shapes, val split, 12 images" in out and "top-5       n/a (2 classes)" in out
    assert "top_left" in out and "macro avg" in out and "confusion matrix" in out
    code, out, _ = run_cli(["eval", "--checkpoint", run.output_dir, "--split", "train", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["split"] == "train" and report["images"] == 36
    assert report["classes"] == ["top_left", "bottom_right"] and len(report["confusion"]) == 2
    assert {"precision", "recall", "f1", "support", "class"} == set(report["per_class"][0])
    assert report["top5_accuracy"] is None and 0 <= report["macro"]["f1"] <= 1


def test_predict_table_json_and_unreadable_files(run, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    code, out, err = run_cli(
        ["predict", "--checkpoint", run.output_dir, images, "--top-k", "2", "--batch-size", "1"], capsys
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [str(images / "corner.png"), str(images / "sub" / "grey.jpg")]
    assert all(len(line.split()) == 5 for line in lines)  # file, then two (class, probability) pairs
    assert err.strip() == f"tlcore: warning: cannot read image {images / 'broken.jpg'}: Truncated File Read"
    code, out, err = run_cli(["predict", "--checkpoint", run.output_dir, images / "corner.png", "--json"], capsys)
    records = json.loads(out)
    assert code == 0 and records[0]["image"] == str(images / "corner.png") and err == ""
    top = records[0]["predictions"]
    assert [p["class"] for p in top] in (["top_left", "bottom_right"], ["bottom_right", "top_left"])
    assert sum(p["probability"] for p in top) == pytest.approx(1.0)


def test_predict_errors(run, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    code, _, err = run_cli(["predict", "--checkpoint", run.output_dir, images / "broken.jpg"], capsys)
    lines = err.splitlines()  # one file: one line, naming it and why
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: cannot read image")
    assert "broken.jpg" in lines[0]
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["predict", "--checkpoint", run.output_dir, tmp_path / "empty"], capsys)
    assert "no images found in" in one_line_error(code, err)


def test_export_prints_where_and_how_close(run, capsys):
    code, out, err = run_cli(["export", "--checkpoint", run.output_dir, "--format", "pt2"], capsys)
    assert code == 0, err
    assert out.startswith(
        f"exported pt2 to {run.output_dir / 'best.pt2'} (checked on input [3, 3, 16, 16]: max |difference|"
    )
    assert out.rstrip().endswith(
        f"classes and preprocessing in {run.output_dir / 'best.pt2.json'}; model card in {run.output_dir / 'best.pt2.md'}"
    )


def test_bad_checkpoints_give_one_line_errors(run, tmp_path, capsys):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pth")
    data = (run.output_dir / "best.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:100])
    images = write_images(tmp_path / "images")
    cases = [
        (["eval", "--checkpoint", tmp_path / "plain.pth"], "is not a tlcore checkpoint"),
        (["predict", "--checkpoint", tmp_path / "cut.safetensors", images], "is not a readable safetensors file"),
        (["export", "--checkpoint", tmp_path / "missing.safetensors", "--format", "pt2"], "does not exist"),
        (["eval", "--checkpoint", run.output_dir, "--dataset", "test:nope"], "unknown dataset 'test:nope'"),
        (["eval", "--checkpoint", run.output_dir, "--split", "test"], "split 'test' is not accepted"),
        (["export", "--checkpoint", run.output_dir, "--format", "keras"], "export format 'keras' is not accepted"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli(args, capsys)
        assert fragment in one_line_error(code, err), args


def test_eval_on_a_dataset_with_other_classes(run, host, capsys):
    from tlcore.dataset import DatasetSplits
    from tlcore.hookspecs import hookimpl
    from tlcore.testing import shapes_dataset

    class Renamed:
        @hookimpl
        def tlcore_register_datasets(self, register):
            def factory(name, options):
                data = shapes_dataset(seed=options.seed)
                return DatasetSplits(["top_left", "middle"], data.train, data.val)

            register("test:renamed", factory)

    host.register(Renamed(), "renamed")
    code, _, err = run_cli(["eval", "--checkpoint", run.output_dir, "--dataset", "test:renamed"], capsys)
    line = one_line_error(code, err)
    assert "other classes than the checkpoint; only in the dataset: middle; only in the checkpoint: bottom_right" in line
