"""examples/tlcore-example-plugin as a user gets it: installed, listed, used by `tlcore run`, uninstalled.

The package is installed with uv into a throwaway --target folder that only a
subprocess sees (PYTHONPATH), so the shared environment is never modified.
The same subprocess runs the example's own test suite, which is not collected
by the repository's pytest run.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlcore import plugins
from tlcore.errors import UnknownNameError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tlcore-example-plugin"
KINDS = ("backbones", "datasets", "freeze", "callbacks")
SKIP = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")

# Runs in the subprocess: several `tlcore` commands in one interpreter (each start costs seconds of imports),
# then the example's own tests. Prints one JSON object.
DRIVER = r"""
import contextlib, io, json, sys
import pytest
from tlcore import cli

source, output = sys.argv[1], sys.argv[2]

def tlcore(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

results = {
    "plugins": tlcore("plugins", "--json"),
    **{kind: tlcore("list", kind, "example:*", "--json") for kind in ("backbones", "datasets", "freeze", "callbacks")},
    "run": tlcore(
        "run", "--backbone", "example:smallnet", "--weights", "none", "--dataset", "example:stripes",
        "--freeze", "example:top-half", "--callbacks", "-progress,+example:summary", "--epochs", "1",
        "--batch-size", "32", "--device", "cpu", "--workers", "0", "--output", output + "/run",
    ),
    "command": tlcore("example-stripes", output + "/stripes", "--per-class", "1"),
}
with contextlib.redirect_stdout(io.StringIO()) as log:
    results["pytest"] = int(pytest.main(["-q", "-p", "no:cacheprovider", source + "/tests"]))
results["pytest_log"] = log.getvalue()
print(json.dumps(results))
"""


def install(source: Path, target: Path) -> None:
    """``pip install SOURCE`` into ``target`` only: uv, no dependencies, no network, no shared cache."""
    command = [sys.executable, "-m", "uv", "pip", "install", "--python", sys.executable, "--target", str(target)]
    command += ["--no-deps", "--no-build-isolation", "--offline", "--no-cache", "--quiet", str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def subprocess_env(target: Path, select: str) -> dict[str, str]:
    """The environment of a subprocess that sees ``target`` and loads only the installed plugins ``select``."""
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_DISABLE}
    path = os.pathsep.join([str(target), *filter(None, [env.get("PYTHONPATH")])])
    # One torch thread: two thrash when other processes share the cores.
    env.update(PYTHONPATH=path, TLCORE_PLUGINS=select, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def installed(tmp_path):
    """A copy of the example (the build writes into its source folder) installed into tmp_path/target."""
    source = tmp_path / "tlcore-example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=SKIP)
    install(source, tmp_path / "target")
    yield source, tmp_path / "target"
    for name in [name for name in sys.modules if name == "tlcore_example" or name.startswith("tlcore_example.")]:
        del sys.modules[name]


def test_installed_example_is_listed_usable_and_passes_its_tests(installed, tmp_path):
    source, target = installed
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(source), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(target, "example"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for name, result in results.items():
        if isinstance(result, dict):
            assert result["code"] == 0, (name, result["err"])

    records = {record["name"]: record for record in json.loads(results["plugins"]["out"])}
    example = records["example"]
    assert (example["source"], example["distribution"], example["version"], example["error"]) == (
        "entry point",
        "tlcore-example-plugin",
        "0.1.0",
        None,
    )
    assert set(example["hooks"]) == {
        "tlcore_register_backbones",
        "tlcore_register_datasets",
        "tlcore_register_freeze_policies",
        "tlcore_register_callbacks",
        "tlcore_register_commands",
    }
    listed = {kind: {row["name"]: row["plugin"] for row in json.loads(results[kind]["out"])} for kind in KINDS}
    assert listed == {
        "backbones": {"example:smallnet": "example", "example:smallnet-wide": "example"},
        "datasets": {"example:stripes": "example"},
        "freeze": {"example:top-half": "example"},
        "callbacks": {"example:summary": "example"},
    }

    run = tmp_path / "out" / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["backbone"] == "example:smallnet" and saved["config"]["freeze"] == "example:top-half"
    assert saved["plugins"]["example"] == "0.1.0"
    summary = json.loads((run / "example-summary.json").read_text())
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    assert len(list((tmp_path / "out" / "stripes").rglob("*.png"))) == 8

    # The example's own suite, against the installed package (its entry-point test runs only when installed).
    assert results["pytest"] == 0, results["pytest_log"][-3000:]
    assert " passed" in results["pytest_log"] and "skipped" not in results["pytest_log"], results["pytest_log"][-3000:]


def test_removing_the_package_removes_every_part(installed, monkeypatch):
    _, target = installed
    monkeypatch.setenv(plugins.ENV_SELECT, "example")
    monkeypatch.syspath_prepend(str(target))
    host = plugins.PluginHost()
    assert host.records["example"].error is None
    assert host.catalog("backbones").resolve("example:smallnet").plugin == "example"

    shutil.rmtree(target)  # what `pip uninstall` does to the files
    for name in [name for name in sys.modules if name.startswith("tlcore_example")]:
        del sys.modules[name]
    assert not [ep for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP) if ep.name == "example"]
    host = plugins.PluginHost()
    assert "example" not in host.records
    for kind, name in [("backbones", "example:smallnet"), ("datasets", "example:stripes"), ("freeze", "example:top-half")]:
        with pytest.raises(UnknownNameError):
            host.catalog(kind).resolve(name)
