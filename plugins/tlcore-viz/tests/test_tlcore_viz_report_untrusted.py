"""`tlcore report` on a run folder whose config.json or metrics.jsonl is valid JSON of the wrong shape: one clear error."""

from __future__ import annotations

import json

import pytest
from tlcore_viz.report import build_report, read_run

from tlcore.errors import DataError

GOOD_CONFIG = {"config": {"backbone": "test:tiny"}, "resolved": {"classes": ["a", "b"]}, "versions": {}, "plugins": {}}
GOOD_LINE = {"epoch": 1, "train_loss": 0.5, "train_acc": 0.5, "val_loss": 0.6, "val_acc": 0.5, "lr": 0.001}


def run_folder(tmp_path, config=GOOD_CONFIG, lines=(GOOD_LINE,)):
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


BAD_CONFIGS = {
    "a list": [1, 2],
    "a string": "config",
    "config a list": {"config": []},
    "resolved a number": {"resolved": 3},
    "classes a string": {"resolved": {"classes": "ab"}},
}
BAD_LINES = {
    "a list": [1],
    "a number": 3,
    "epoch a string": {**GOOD_LINE, "epoch": "1"},
    "epoch a float": {**GOOD_LINE, "epoch": 1.5},
    "epoch zero": {**GOOD_LINE, "epoch": 0},
    "val_acc a string": {**GOOD_LINE, "val_acc": "high"},
    "val_loss missing": {k: v for k, v in GOOD_LINE.items() if k != "val_loss"},
    "lr an object": {**GOOD_LINE, "lr": {"x": 1}},
    "train_loss true": {**GOOD_LINE, "train_loss": True},
    "val_map a string": {**GOOD_LINE, "val_map": "0.5"},  # multilabel metrics are drawn too
    "val_f1_macro a list": {**GOOD_LINE, "val_map": 0.5, "val_f1_macro": [0.5]},
}


@pytest.mark.parametrize("config", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_config_json_of_the_wrong_shape(tmp_path, config):
    with pytest.raises(DataError, match="config.json is damaged"):
        build_report(run_folder(tmp_path, config=config))


@pytest.mark.parametrize("line", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_metrics_line_of_the_wrong_shape(tmp_path, line):
    with pytest.raises(DataError, match="metrics.jsonl line 2 is damaged"):
        build_report(run_folder(tmp_path, lines=(GOOD_LINE, line)))


def test_deeply_nested_json_is_a_data_error(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="damaged config.json"):
        read_run(tmp_path)


def test_report_command_gives_one_line(tmp_path, viz_cli, capsys):
    run_folder(tmp_path, lines=(BAD_LINES["epoch a string"],))
    code, _, err = viz_cli(["report", str(tmp_path)], capsys)
    errors = [line for line in err.splitlines() if line.startswith("tlcore: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "metrics.jsonl line 1 is damaged: epoch must be an integer from 1, got '1'" in errors[0]


def test_good_files_pass(tmp_path):
    config, history = read_run(run_folder(tmp_path, lines=(GOOD_LINE, {**GOOD_LINE, "epoch": 2})))
    assert config == GOOD_CONFIG and [m["epoch"] for m in history] == [1, 2]


MATHTEXT_NAMES = ["price $\\frac{1}{$", "$x^2$ and $", "50$", "a_{b}$$"]


def test_class_names_with_mathtext_are_drawn_literally():
    from PIL import Image
    from tlcore_viz import plots

    # matplotlib parses "$...$" as math: the first name is a ParseSyntaxException without literal text
    png = plots.confusion_png([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], MATHTEXT_NAMES)
    assert png.startswith(b"\x89PNG")
    titles = [f"{name} (50%)\ntrue: {name}" for name in MATHTEXT_NAMES]
    png = plots.image_grid_png([Image.new("RGB", (8, 8))] * 4, titles, [True, False, True, False], "mistakes $\\frac{")
    assert png.startswith(b"\x89PNG")
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5}]
    assert plots.curves_png(history).startswith(b"\x89PNG")


def test_literal_text_leaves_the_users_matplotlib_settings_alone():
    import matplotlib
    from tlcore_viz import plots

    before = matplotlib.rcParams["text.parse_math"]
    plots.confusion_png([[1, 0], [0, 1]], ["$a", "b"])
    assert matplotlib.rcParams["text.parse_math"] == before
