"""`tlcore new-plugin NAME`: a skeleton that installs, is listed, and passes its own tests; bad input is refused."""

import json
import os
import subprocess
import sys

import pytest

from tlcore import cli, plugins, scaffold

# Runs in a subprocess that sees the installed skeleton: `tlcore plugins --json`, then the skeleton's own tests,
# in one interpreter (each start costs seconds of imports). Prints one JSON object.
DRIVER = r"""
import contextlib, io, json, sys
import pytest
from tlcore import cli

out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        cli.main(["plugins", "--json"])
        code = 0
    except SystemExit as stop:
        code = stop.code
    listed = out.getvalue()
    out.truncate(0)
    tests = int(pytest.main(["-q", "-p", "no:cacheprovider", sys.argv[1]]))
print(json.dumps({"code": code, "plugins": listed, "pytest": tests, "log": out.getvalue()}))
"""


@pytest.fixture
def new_plugin(host, monkeypatch, capsys, tmp_path):
    """``tlcore new-plugin ARGS`` in-process; returns (code, out, err). Runs in tmp_path."""
    if "tlcore.scaffold" not in host.records:  # until it is one of plugins.BUILTIN_MODULES
        host.register(scaffold, "tlcore.scaffold")
    monkeypatch.chdir(tmp_path)
    core = [command for command in cli.app.registered_commands if command.callback.__module__ == cli.__name__]

    def run(*args):
        monkeypatch.setattr(cli.app, "registered_commands", list(core))
        monkeypatch.setattr(cli, "_plugin_commands_added", False)
        try:
            cli.main(["new-plugin", *map(str, args)])
            code = 0
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_skeleton_installs_is_listed_and_passes_its_tests(new_plugin, tmp_path):
    code, out, err = new_plugin("my-models")
    assert code == 0, err
    folder = tmp_path / "tlcore-my-models"
    assert f"created tlcore-my-models in {folder}" in out
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "tests/test_plugin.py",
        "tlcore_my_models/__init__.py",
        "tlcore_my_models/backbone.py",
        "tlcore_my_models/dataset.py",
    ]
    assert 'TLCORE_API = ">=1,<2"' in (folder / "tlcore_my_models" / "__init__.py").read_text()
    for check in (["check"], ["format", "--check"]):  # the generated code is lint-clean under its own settings
        done = subprocess.run([sys.executable, "-m", "ruff", *check, "--no-cache", "."], cwd=folder, capture_output=True)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    target = tmp_path / "target"
    install = [sys.executable, "-m", "uv", "pip", "install", "--python", sys.executable, "--target", str(target)]
    install += ["--no-deps", "--no-build-isolation", "--offline", "--no-cache", "--quiet", str(folder)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_DISABLE}
    path = os.pathsep.join([str(target), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PYTHONPATH=path, TLCORE_PLUGINS="my-models", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(folder / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    record = {r["name"]: r for r in json.loads(result["plugins"])}["my-models"]
    assert (record["source"], record["distribution"], record["version"], record["error"]) == (
        "entry point",
        "tlcore-my-models",
        "0.1.0",
        None,
    )
    assert record["hooks"] == ["tlcore_register_backbones", "tlcore_register_datasets"]
    assert result["pytest"] == 0, result["log"][-3000:]
    assert "5 passed" in result["log"] and "skipped" not in result["log"], result["log"][-3000:]


def test_output_option_and_an_empty_folder(new_plugin, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = new_plugin("tlcore-cam_tools", "--output", tmp_path / "empty")
    assert code == 0, err
    pyproject = (tmp_path / "empty" / "pyproject.toml").read_text()
    assert 'name = "tlcore-cam-tools"' in pyproject and 'cam_tools = "tlcore_cam_tools"' in pyproject
    assert (tmp_path / "empty" / "tlcore_cam_tools" / "__init__.py").is_file()


@pytest.mark.parametrize("name", ["MyModels", "1st", "my models", "my--models", "x-", "x_", "tlcore", "x" * 41, "a/b"])
def test_bad_names_are_refused_in_one_line(new_plugin, tmp_path, name):
    code, _, err = new_plugin(name)
    assert code == 2
    assert err == (
        f"tlcore: error: plugin name {name!r} is not accepted: use lowercase letters and digits, starting with a letter, "
        "words joined by single - or _ (at most 40 characters), e.g. my-models\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_plugins_name_is_refused(new_plugin, host, tmp_path):
    host.register(object(), "tiny")
    code, _, err = new_plugin("tiny")
    assert code == 2
    assert err == "tlcore: error: a plugin named 'tiny' is already loaded (from runtime); choose another name\n"
    assert list(tmp_path.iterdir()) == []


def test_a_skeleton_named_like_the_test_plugin_passes_its_own_tests(new_plugin, tmp_path):
    """The fixtures' own test plugin takes reserved names, so no plugin's name (here `tiny`) collides with them."""
    code, _, err = new_plugin("tiny")
    assert code == 0, err
    folder = tmp_path / "tlcore-tiny"
    env = {k: v for k, v in os.environ.items() if k not in (plugins.ENV_DISABLE, plugins.ENV_SELECT)}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 passed, 1 skipped" in done.stdout  # skipped: the entry-point test, as it is not installed


def test_an_existing_folder_is_never_overwritten(new_plugin, tmp_path):
    folder = tmp_path / "tlcore-mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, _, err = new_plugin("mine")
    assert code == 2
    assert err == f"tlcore: error: {folder} already exists and is not an empty folder; nothing was written\n"
    assert [path.name for path in folder.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    code, _, err = new_plugin("mine", "--output", tmp_path / "file")
    assert code == 2 and "already exists and is not an empty folder" in err
