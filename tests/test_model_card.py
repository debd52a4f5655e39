"""The model card (README.md in every run folder), its copy beside exports, and the built-in CSV metrics log."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tlcore import hookimpl
from tlcore.backbone import Preprocessing
from tlcore.callbacks.base import Callback
from tlcore.errors import PluginError
from tlcore.export import export_checkpoint
from tlcore.model_card import MARKER, ModelCard, command_line, confusion_matrix, read_card, render_card
from tlcore.state import ValidationOutputs
from tlcore.train import fit


@pytest.fixture
def run(host, tiny_config):
    return fit(tiny_config(epochs=2, callbacks="-progress,+csv"), host)


def test_every_run_folder_gets_a_card(run):
    card = (run.output_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: tlcore\n") and MARKER in card
    for fragment in (
        "# tlcore.testing:shapes classifier: tlcore.testing:tiny",
        "Status: finished.",
        "- Backbone: `tlcore.testing:tiny`",
        "- Starting weights: none (`--weights none`)",
        "- Files: `best.safetensors` (epoch ",
        "## Classes (2, in output order)",
        "- 0. top\\_left",
        "- 1. bottom\\_right",
        "2. Resize the shorter side to 18 px (bilinear interpolation, antialiased).",
        "3. Centre-crop 16 x 16 px.",
        "5. Normalise each channel: mean (0.5000, 0.5000, 0.5000), std (0.5000, 0.5000, 0.5000).",
        f"Best epoch {run.best['epoch']}: val_acc **{run.best['val_acc']:.4f}**",
        "## Versions",
        f"- torch {torch.__version__.split('+')[0]}",
        "## Intended use and limitations",
    ):
        assert fragment in card, fragment
    rows = [line for line in card.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    assert len(rows) == 2  # one row per epoch
    assert "training and" in card and "validation images" in card  # the split's sizes
    assert read_card(run.output_dir) == card


class FailsAtEpochEnd(Callback):
    """A callback that fails after the first epoch's card is written (it runs after model_card)."""

    name, order = "fails", 20

    def on_epoch_end(self, run, metrics):
        raise RuntimeError("disk on fire")


class FailingPlugin:
    @hookimpl
    def tlcore_register_callbacks(self, register):
        register("fails", lambda config: FailsAtEpochEnd())


def test_the_card_is_written_after_each_epoch_and_says_when_the_run_was_cut_short(tiny_config, host, tlcore_register):
    tlcore_register(FailingPlugin(), "failing")
    config = tiny_config(epochs=3, callbacks="-progress,+fails")
    with pytest.raises(PluginError, match="disk on fire"):
        fit(config, host)
    card = (Path(config.output) / "README.md").read_text()
    assert "Status: ended before its last epoch (PluginError); the files describe epoch 1." in card
    assert "| 1 |" in card and "| 2 |" not in card


def fake_run(classes, logits=None, labels=None, tmp_path=None):
    outputs = None
    if logits is not None:
        outputs = ValidationOutputs(epoch=1, logits=logits, labels=labels, indices=torch.arange(len(labels)))
    config = SimpleNamespace(
        dataset="imagefolder", backbone="timm:resnet18", weights="pretrained", head="linear", head_hidden=512,
        head_dropout=0.0, freeze="none", freeze_to=None, data_dir="/data/x", folds=None, fold=None, seed=0,
        val_fraction=0.2, epochs=1, batch_size=8, accumulate=1, optimizer="adamw", lr=0.001, schedule="cosine",
        augment="standard", task="multiclass",
    )
    metrics = dict(epoch=1, train_loss=0.5, train_acc=0.6, val_loss=0.4, val_acc=0.75, lr=0.001)
    return SimpleNamespace(
        config=config, classes=classes, history=[metrics], backbone=SimpleNamespace(
            weights="timm pretrained resnet18.a1_in1k", preprocessing=Preprocessing()
        ), image_size=224, saved_epochs={"best.safetensors": 1, "last.safetensors": 1}, splits=None,
        output_dir=tmp_path, temperatures={1: 1.25}, best_validation=outputs, last_validation=outputs, device="cpu",
        stop_reason="", thresholds={},
    )


def test_confusion_summary_from_the_kept_validation_predictions(tmp_path):
    # 4 images: two cats (one called a dog), a dog, a bird called a cat
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [5.0, 0, 0]])
    labels = torch.tensor([0, 0, 1, 2])
    card = render_card(fake_run(["cat", "dog", "bird"], logits, labels, tmp_path), ["tlcore", "run"])
    assert "Confusion summary (validation predictions of epoch 1, 4 images, 2 correct):" in card
    assert "| cat | 2 | 0.5000 | 0.5000 |" in card  # recall 1/2, precision 1/2
    assert "| dog | 1 | 1.0000 | 0.5000 |" in card
    assert "| bird | 1 | 0.0000 | - |" in card  # never predicted: no precision
    assert "- cat -> dog: 1" in card and "- bird -> cat: 1" in card
    assert "(1.25 for best.safetensors)" in card
    assert "2. Resize the shorter side to 256 px (bilinear" in card  # 224 / 0.875


def test_the_best_epoch_is_the_one_best_safetensors_holds(tmp_path):
    run = fake_run(["a", "b"], tmp_path=tmp_path)
    run.history = [dict(run.history[0], epoch=1, val_acc=0.9), dict(run.history[0], epoch=2, val_acc=0.8)]
    run.saved_epochs = {"best.safetensors": 2, "last.safetensors": 2}  # --ema: the average of epoch 2 validated better
    run.temperatures = {1: 1.5, 2: 2.0}
    card = render_card(run, ["tlcore"])
    assert "Best epoch 2: val_acc **0.8000**" in card and "(2 for best.safetensors)" in card
    run.saved_epochs = {}  # no checkpoint written: the highest val_acc
    assert "Best epoch 1: val_acc **0.9000**" in render_card(run, ["tlcore"])


def test_without_kept_predictions_the_card_says_so(tmp_path):
    run = fake_run(["a", "b"], tmp_path=tmp_path)
    run.data_notes = ["skipped 2 files", "validation: holding out 359 of 1,797 images, seed 0"]
    card = render_card(run, ["tlcore"])
    assert "- Split: holding out 359 of 1,797 images, seed 0\n" in card
    assert "the validation predictions were not kept" in card and "val_acc **0.7500**" in card


def test_class_names_from_the_data_cannot_change_the_cards_structure(tmp_path):
    names = ["a|b", "# heading", "<script>x</script>", "line\nbreak", "`tick`", "- item"]
    logits = torch.eye(6) * 5
    card = render_card(fake_run(names, logits, torch.arange(6), tmp_path), ["tlcore"])
    assert "| a\\|b | 1 |" in card and "\\# heading" in card and "\\<script\\>" in card and "line break" in card
    assert "<script>" not in card and "\n# heading" not in card and "- 5. \\- item" in card
    table_rows = [line for line in card.splitlines() if line.endswith(" | 1 | 1.0000 | 1.0000 |")]
    assert len(table_rows) == 6 and all(row.count(" | ") == 3 for row in table_rows)


def test_confusion_matrix_counts_and_ignores_out_of_range():
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2, 7]), torch.tensor([0, 0, 1, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_many_classes_show_the_worst_recalled_and_the_top_confusions(tmp_path):
    classes = [f"c{i}" for i in range(1000)]
    labels = torch.arange(1000).repeat(2)  # two images per class
    predicted = labels.clone()
    predicted[:7] = 999  # the first image of classes 0..6 is called c999
    card = render_card(fake_run(classes, torch.nn.functional.one_hot(predicted, 1000).float(), labels, tmp_path), ["t"])
    assert "The 30 classes with the lowest recall:" in card
    rows = [line for line in card.splitlines() if line.startswith("| c") and not line.startswith("| class")]
    assert len(rows) == 30 and rows[0] == "| c0 | 2 | 0.5000 | 1.0000 |" and rows[6].startswith("| c6 | 2 | 0.5000")
    assert "- c0 -> c999: 1" in card and card.count(" -> c999: 1") == 5  # the five most frequent, ties by class


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/tlcore", "run", "--output", "my runs/a b"], "tlcore run --output 'my runs/a b'"),
        (["/x/tlcore/__main__.py", "run", "--callbacks", "+csv;rm"], "tlcore run --callbacks '+csv;rm'"),
        (["train.py", "--fast"], "python train.py --fast"),
        (["tlcore", "run", "--hf-token", "hf_abc", "--api-key=k1", "--mlflow-tracking-uri", "http://me:pw@host:5000/x"],
         "tlcore run --hf-token '***' '--api-key=***' --mlflow-tracking-uri 'http://***@host:5000/x'"),
        ([], "tlcore"),
    ],
)
def test_the_exact_command_is_shell_quoted(argv, expected):
    assert command_line(argv) == expected


def test_the_command_in_the_card_is_the_processs(run):
    assert command_line(sys.argv) in (run.output_dir / "README.md").read_text()
    assert ModelCard().argv == sys.argv


def test_a_resumed_run_keeps_the_command_that_started_it(tmp_path):
    first = ModelCard(["tlcore", "run", "--epochs", "5", "--hf-token", "hf_x"])
    saved = json.loads(json.dumps(first.state_dict()))  # through JSON, as the training state stores it
    assert "hf_x" not in json.dumps(saved)
    later = ModelCard(["tlcore", "run", "--resume", "runs/a"])
    later.load_state_dict(saved)
    run = fake_run(["a", "b"], tmp_path=tmp_path)
    later.on_epoch_end(run, run.history[-1])
    card = (tmp_path / "README.md").read_text()
    assert "tlcore run --epochs 5 --hf-token '***'\ntlcore run --resume runs/a  # resumed\n" in card


@pytest.mark.parametrize("state", [{}, {"argv": "tlcore run"}, {"argv": [1]}, {"argv": ["a"], "resumed": ["b"]}])
def test_a_damaged_saved_command_is_ignored(state):
    card = ModelCard(["tlcore", "run", "--resume", "x"])
    card.load_state_dict(state)
    assert card.argv == ["tlcore", "run", "--resume", "x"] and card.resumed == []


def test_a_readme_tlcore_did_not_write_is_not_a_card(tmp_path):
    (tmp_path / "README.md").write_text("# my notes\n\n<!-- tlcore model card -->\n")  # the marker only in the body
    assert read_card(tmp_path) is None
    (tmp_path / "README.md").write_bytes(b"\xff\xfe not utf-8")
    assert read_card(tmp_path) is None
    assert read_card(tmp_path / "missing") is None


def test_export_copies_the_card_beside_the_exported_file(run, host, tmp_path):
    target = tmp_path / "elsewhere" / "model.torchscript.pt"
    target.parent.mkdir()
    (target.parent / "README.md").write_text("the user's own readme\n")
    result = export_checkpoint(run.output_dir / "best.safetensors", "torchscript", target, host=host)
    assert result.card == target.with_name("model.torchscript.pt.md")
    copied = result.card.read_text()
    assert copied.startswith((run.output_dir / "README.md").read_text().rstrip("\n"))
    assert "## This export" in copied
    assert "`model.torchscript.pt` (torchscript) was exported from `best.safetensors`" in copied
    assert (target.parent / "README.md").read_text() == "the user's own readme\n"  # nothing of the user's replaced


def test_export_of_a_checkpoint_without_a_card_writes_none(run, host, tmp_path):
    (run.output_dir / "README.md").unlink()
    result = export_checkpoint(run.output_dir / "best.safetensors", "torchscript", tmp_path / "m.pt", host=host)
    assert result.card is None and not (tmp_path / "m.pt.md").exists()


# -- the CSV metrics log --------------------------------------------------------------------------------------------


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_metrics_csv_matches_metrics_jsonl(run):
    rows = read_csv(run.output_dir / "metrics.csv")
    lines = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert list(rows[0]) == list(lines[0])  # the header is the keys, in order
    for row, line in zip(rows, lines, strict=True):
        assert float(row["val_acc"]) == line["val_acc"] and float(row["train_loss"]) == line["train_loss"]


def test_a_key_that_appears_later_extends_the_header(tmp_path):
    from tlcore.callbacks.builtin import CsvLog

    state = SimpleNamespace(output_dir=tmp_path, history=[])
    log = CsvLog()
    state.history.append({"epoch": 1, "val_acc": 0.5})
    log.on_epoch_end(state, state.history[-1])
    state.history.append({"epoch": 2, "val_acc": 0.6, "ema_val_acc": 0.7, "groups": ["a", "b"], "none": None})
    log.on_epoch_end(state, state.history[-1])
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "val_acc", "ema_val_acc", "groups", "none"]
    assert rows[0]["ema_val_acc"] == "" and rows[1]["ema_val_acc"] == "0.7"
    assert json.loads(rows[1]["groups"]) == ["a", "b"] and rows[1]["none"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left


def test_a_resumed_run_lists_each_epoch_once(tmp_path):
    from tlcore.callbacks.builtin import CsvLog

    (tmp_path / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n2,0.6\n3,0.9\n")  # epoch 3 ran, its state was lost
    state = SimpleNamespace(output_dir=tmp_path, history=[{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}])
    log = CsvLog()
    log.on_fit_start(state)
    state.history.append({"epoch": 3, "val_acc": 0.8})
    log.on_epoch_end(state, state.history[-1])
    assert [(r["epoch"], r["val_acc"]) for r in read_csv(tmp_path / "metrics.csv")] == [
        ("1", "0.5"), ("2", "0.6"), ("3", "0.8")
    ]


def test_csv_is_opt_in_and_listed(tlcore_cli):
    code, out, _ = tlcore_cli("list", "callbacks")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["csv"][2] == "no" and rows["model_card"][2] == "yes"
