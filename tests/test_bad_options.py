"""Every bad option is one line, exit 2; eval says what it scored, and never fetches what a checkpoint records.

- click's own usage errors are rephrased into ``tlcore: error: ...``;
- option limits are declared once beside each RunConfig field, and every
  declared bound and choice is enforced, naming the option, before any work;
- eval, predict and export refuse out-of-range values up front;
- ``tlcore eval --data-dir`` on other data scores every image; ``--split``
  takes train, val, test or all; a subset is always named with its size.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from tlcore import cli
from tlcore.config import FIELDS, HELP, RunConfig, build_config, check_option
from tlcore.errors import ConfigError, DataError
from tlcore.evaluation import evaluate_checkpoint, render_report
from tlcore.testing import TINY_BACKBONE, TINY_DATASET, write_image_folder


def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("tlcore: warning: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


USAGE = {
    "not an integer": (["run", "--epochs", "abc"], "invalid value for '--epochs'"),
    "unknown flag": (["run", "--epoch", "3"], "no such option: --epoch"),
    "flag without its value": (["run", "--epochs"], "option '--epochs' requires an argument"),
    "missing required option": (["eval"], "missing option '--checkpoint'"),
    "missing argument": (["predict", "--checkpoint", "x"], "missing argument"),
    "unknown list kind": (["list", "foo"], "'foo' is not one of"),
    "unknown command": (["fit"], "no such command 'fit'"),
    "no command": ([], "missing command"),
}


@pytest.mark.parametrize("args, fragment", USAGE.values(), ids=USAGE.keys())
def test_click_usage_errors_are_one_tlcore_line(host, capsys, args, fragment):
    code, _, err = run_cli(args, capsys)
    assert_one_line(code, err, fragment, "--help")


def test_help_still_works(host, capsys):
    for args in (["--help"], ["run", "--help"], ["eval", "--help"]):
        code, out, _ = run_cli(args, capsys)
        assert code == 0 and "Usage" in out


OUT_OF_RANGE = {
    "warmup huge": (["--warmup-epochs", "1e308"], "warmup_epochs must be at most"),
    "class weight NaN": (["--class-weights", "nan,1"], "class_weights entries must be finite"),
    "class weight inf": (["--class-weights", "1,inf"], "class_weights entries must be finite"),
    "class weights zero": (["--class-weights", "0,0"], "class_weights must not be all zero"),
    "class weight negative": (["--class-weights", "1,-1"], "class_weights entries must be finite, non-negative"),
    "lr mult NaN": (["--lr-mults", "stem=nan"], "lr_mults entries must be finite"),
    "lr mult inf": (["--lr-mults", "head=inf"], "lr_mults entries must be finite"),
    "lr mults zero": (["--lr-mults", "stem=0,head=0"], "lr_mults must not be all zero"),
    "lr mult not a pair": (["--lr-mults", "stem"], "is not NAME=FACTOR"),
    "workers negative": (["--workers", "-1"], "workers must be in [0, 256], got -1"),
    "gamma above one": (["--gamma", "2"], "gamma must be in (0, 1], got 2.0"),
}


@pytest.mark.parametrize("args, fragment", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_run_refuses_out_of_range_values_up_front(host, tmp_path, capsys, args, fragment):
    tiny = ["--backbone", TINY_BACKBONE, "--dataset", TINY_DATASET, "--weights", "none"]
    code, _, err = run_cli(["run", *tiny, "--output", tmp_path / "r", *args], capsys)
    assert_one_line(code, err, fragment)
    assert not (tmp_path / "r").exists()


def just_outside(meta) -> list[float]:
    values = []
    for key, step in (("at_least", -1), ("above", 0), ("at_most", 1), ("below", 0)):
        bound = meta.get(key)
        if bound is not None:
            values.append(bound + step if step else bound)
    return values


def test_every_declared_bound_and_choice_is_enforced_naming_the_option():
    checked = 0
    for name, field in FIELDS.items():
        assert field.metadata["help"] and HELP[name].startswith(field.metadata["help"]), name
        kind = dataclasses.fields(RunConfig)[list(FIELDS).index(name)].type
        for value in just_outside(field.metadata):
            value = int(value) if "int" in str(kind) and "float" not in str(kind) else float(value)
            with pytest.raises(ConfigError, match=name):
                build_config(overrides={name: value})
            with pytest.raises(ConfigError, match=name):
                check_option(name, value)
            checked += 1
        if field.metadata["choices"]:
            with pytest.raises(ConfigError, match=f"{name} 'nope' is not accepted; accepted: "):
                build_config(overrides={name: "nope"})
            assert all(choice in HELP[name] for choice in field.metadata["choices"])
            checked += 1
    assert checked > 30


def test_commands_refuse_bad_values_before_reading_anything(host, tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    image = tmp_path / "no-such-image.png"
    cases = [
        (["eval", "--checkpoint", missing, "--workers", "-1"], "workers must be in [0, 256], got -1"),
        (["eval", "--checkpoint", missing, "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["eval", "--checkpoint", missing, "--split", "everything"], "split 'everything' is not accepted"),
        (["predict", image, "--checkpoint", missing, "--top-k", "0"], "top_k must be an integer from 1"),
        (["predict", image, "--checkpoint", missing, "--top-k", "-3"], "top_k must be an integer from 1"),
        (["predict", image, "--checkpoint", missing, "--batch-size", "-1"], "batch_size must be a positive integer"),
    ]
    folder = tmp_path / "exports"
    folder.mkdir()
    export = ["export", "--checkpoint", missing, "--format", "torchscript", "--output"]
    cases.append(([*export, folder], "is an existing folder"))
    locked = tmp_path / "model.pt"
    locked.write_bytes(b"keep me")
    locked.chmod(0o444)
    cases.append(([*export, locked], "is a read-only file"))
    for args, fragment in cases:
        code, _, err = run_cli(args, capsys)
        assert_one_line(code, err, fragment)
    assert locked.read_bytes() == b"keep me"


# -- eval: which images, how many, and from where ------------------------------------------------


@pytest.fixture
def folder_run(host, tiny_config, tmp_path):
    """A one-epoch tiny run on an image folder with train/ (2 x 6) and val/ (2 x 6); returns (run, data)."""
    from tlcore.train import fit

    host.register(pytest.importorskip("tlcore_datasets"), "datasets")
    data = write_image_folder(tmp_path / "data", per_class=6, size=16)
    config = tiny_config(dataset="imagefolder", data_dir=str(data), image_size=16, epochs=1, callbacks="-progress")
    return fit(config, host), data


def test_eval_names_the_subset_it_scores_and_all_scores_every_image(folder_run, capsys):
    run, data = folder_run
    val = evaluate_checkpoint(run.output_dir, device="cpu")
    assert val.split == "val" and val.metrics.images == 12
    assert "val split, 12 images (a subset: 12 of the dataset's 24: train 12, val 12; --split all" in render_report(val)
    every = evaluate_checkpoint(run.output_dir, split="all", device="cpu")
    assert every.metrics.images == 24 and "all splits, 24 images (train 12, val 12)" in render_report(every)
    with pytest.raises(ConfigError, match="split 'test' is not accepted: dataset 'imagefolder' has no test split"):
        evaluate_checkpoint(run.output_dir, split="test", device="cpu")
    shutil.copytree(data / "val", data / "test")
    test = evaluate_checkpoint(run.output_dir, split="test", device="cpu")
    assert test.metrics.images == 12 and test.split_sizes == {"train": 12, "val": 12, "test": 12}


def test_eval_on_a_folder_it_was_not_trained_on_scores_every_image(folder_run, tmp_path, capsys):
    run, _ = folder_run
    other = write_image_folder(tmp_path / "other", per_class=5, size=16)  # train/ 10, val/ 10
    code, out, err = run_cli(["eval", "--checkpoint", run.output_dir, "--data-dir", other, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "all splits, 20 images (train 10, val 10)" in out
    code, out, _ = run_cli(["eval", "--checkpoint", run.output_dir, "--data-dir", other, "--split", "val"], capsys)
    assert code == 0 and "val split, 10 images (a subset: 10 of the dataset's 20" in out


def test_a_recorded_data_folder_that_is_gone_is_never_created(folder_run, tmp_path):
    run, data = folder_run
    moved = tmp_path / "moved"
    data.rename(moved)
    with pytest.raises(DataError, match=f"{data}, does not exist \\(nothing was created or downloaded\\); pass --data-dir"):
        evaluate_checkpoint(run.output_dir, device="cpu")
    assert not data.exists()
    assert evaluate_checkpoint(run.output_dir, data_dir=str(moved), device="cpu").metrics.images == 24


def test_the_recorded_dataset_is_never_downloaded(folder_run, monkeypatch):
    run, _ = folder_run
    from tlcore import evaluation

    seen = []
    real = evaluation.build_dataset

    def build_dataset(config, host):
        seen.append(config.download)
        return real(config, host)

    monkeypatch.setattr(evaluation, "build_dataset", build_dataset)
    evaluate_checkpoint(run.output_dir, device="cpu")
    assert seen == [False]


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes read-only folders")
def test_export_into_a_read_only_folder_is_refused(host, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    code, _, err = run_cli(
        ["export", "--checkpoint", tmp_path / "x", "--format", "torchscript", "--output", folder / "m.pt"], capsys
    )
    assert_one_line(code, err, "cannot be written")


@pytest.mark.parametrize("value", ["\x1e", "a\nb.safetensors", "x\r\u2028y", "tab\there"])
def test_a_value_with_line_breaks_stays_in_one_error_line(host, capsys, tmp_path, value):
    """What a user typed is quoted escaped: the error is one line for any reader (str.splitlines splits on \\x1e)."""
    from tlcore.messages import one_line

    args = ["run", "--backbone", TINY_BACKBONE, "--dataset", TINY_DATASET, "--weights", value, "--output", tmp_path / "r"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlcore: error: weights path "), err
    assert one_line(value) in lines[0]
    assert one_line("plain, é text") == "plain, é text"
