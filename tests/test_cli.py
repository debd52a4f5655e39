"""The command line: options, config files, listings, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from tlcore import cli


def run_cli(args, capsys):
    """Run ``tlcore ARGS`` in-process; returns (exit code, stdout, stderr)."""
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = ["--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes", "--weights", "none", "--batch-size", "8"]


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlcore: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_run_from_the_command_line(host, tmp_path, capsys):
    code, _, err = run_cli(["run", *TINY, "--epochs", "1", "--output", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert (tmp_path / "r" / "metrics.jsonl").exists() and (tmp_path / "r" / "best.safetensors").exists()


def test_config_file_with_flag_overrides(host, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'backbone = "tlcore.testing:tiny"\ndataset = "tlcore.testing:shapes"\nweights = "none"\nepochs = 3\nbatch_size = 8\n'
        'callbacks = ["-progress"]\n'
    )
    code, _, err = run_cli(["run", "--config", str(config), "--epochs", "1", "--output", str(tmp_path / "r")], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["batch_size"] == 8 and saved["callbacks"] == ["-progress"]
    assert "epoch 1/1" not in err  # the progress callback was deselected by the file


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["--backbone", "tlcore.testing:tiyn"],
            ["unknown backbone 'tlcore.testing:tiyn'", "did you mean tlcore.testing:tiny"],
        ),
        (["--dataset", "test:shape"], ["unknown dataset 'test:shape'", "tlcore.testing:shapes"]),
        (["--epochs", "0"], ["epochs must be a positive integer, got 0"]),
        (["--batch-size", "-1"], ["batch_size must be a positive integer, got -1"]),
        (["--image-size", "4"], ["image size 4 is too small for backbone tlcore.testing:tiny; it accepts 8 or more"]),
        (["--optimizer", "adam"], ["optimizer 'adam' is not accepted; accepted: sgd, adamw"]),
        (["--head", "liner"], ["unknown head 'liner'", "linear"]),
        (
            ["--freeze", "everything"],
            ["unknown freeze policy 'everything'", "accepted: backbone, gradual, none, norm, partial"],
        ),
        (["--callbacks", "+nope"], ["unknown callback 'nope'"]),
        (["--weights", "/nonexistent/w.pth"], ["weights path /nonexistent/w.pth does not exist"]),
        (["--device", "tpu"], ["device 'tpu' is not accepted"]),
    ],
)
def test_bad_input_gives_one_line_error(host, tmp_path, capsys, args, fragments):
    code, _, err = run_cli(["run", *TINY, "--output", str(tmp_path / "r"), *args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()


def test_config_file_errors(host, tmp_path, capsys):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("epoch = 3\n")
    code, _, err = run_cli(["run", "--config", str(bad_key)], capsys)
    assert_one_line_error(code, err, "unknown config key 'epoch'; did you mean epochs?")
    bad_type = tmp_path / "type.toml"
    bad_type.write_text('epochs = "three"\n')
    code, _, err = run_cli(["run", "--config", str(bad_type)], capsys)
    assert_one_line_error(code, err, "option epochs must be int")
    not_toml = tmp_path / "x.toml"
    not_toml.write_text("epochs = = 3\n")
    code, _, err = run_cli(["run", "--config", str(not_toml)], capsys)
    assert_one_line_error(code, err, "is not valid TOML")
    code, _, err = run_cli(["run", "--config", str(tmp_path / "missing.toml")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_list_shows_plugin_and_filters(host, capsys):
    code, out, _ = run_cli(["list", "heads"], capsys)
    assert code == 0 and "linear" in out and "tlcore.heads" in out
    code, out, _ = run_cli(["list", "backbones", "tlcore.testing:*", "--json"], capsys)
    assert [row["name"] for row in json.loads(out)] == ["tlcore.testing:tiny"]
    code, out, _ = run_cli(["list", "freeze", "back*"], capsys)
    header, *rows = out.splitlines()
    assert header.split() == ["name", "plugin", "description"]  # tables have a header row
    assert rows[0].split()[0] == "backbone" and "none" not in out.split()


def test_plugins_json(host, capsys):
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    records = {r["name"]: r for r in json.loads(out)}
    assert records["tlcore.testing"]["source"] == "runtime"
    assert "tlcore_register_backbones" in records["tlcore.testing"]["hooks"]
    assert records["tlcore.heads"]["distribution"] == "tlcore"


def test_info_shows_groups_and_preprocessing(host, capsys):
    code, out, _ = run_cli(["info", "tlcore.testing:tiny"], capsys)
    assert code == 0
    assert "feature_dim   16" in out and "stage2" in out and "mean [0.5, 0.5, 0.5]" in out


def test_python_dash_m_works_like_the_command():
    done = subprocess.run([sys.executable, "-m", "tlcore", "list", "heads"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "mlp" in done.stdout
