"""Diagnosis: TLCORE_TRACE_HOOKS prints every hook call; a plugin that raises is named in the error."""

import pytest

import tlcore
from tlcore import cli, plugins
from tlcore.testing import TinyPlugin

TRACE = "tlcore: trace: "


def run_cli(args, capsys):
    """``tlcore ARGS`` in-process (as in tests/test_cli.py); returns (exit code, stdout, stderr)."""
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def traced_host(monkeypatch, value="1"):
    monkeypatch.setenv(plugins.ENV_TRACE, value)
    host = plugins.reset_host(load_installed=False)
    host.register(TinyPlugin(), "tiny")
    return host


@pytest.fixture(autouse=True)
def _fresh_host_after():
    yield
    plugins.reset_host(load_installed=False)


def test_each_call_is_traced_with_hook_plugin_and_what_it_registered(monkeypatch, capsys):
    host = traced_host(monkeypatch)
    host.catalog("backbones")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(TRACE)]
    body = [line.rsplit(" (", 1)[0] for line in lines]  # without the time
    assert f"{TRACE}tlcore_register_backbones plugin=tiny -> registered tlcore.testing:tiny" in body
    assert f"{TRACE}tlcore_register_datasets plugin=tiny -> registered tlcore.testing:shapes, tlcore.testing:tagged" in body
    assert f"{TRACE}tlcore_register_heads plugin=tlcore.heads -> registered linear, mlp" in body
    assert all(line.endswith(" ms)") for line in lines)
    assert len(lines) == sum(len(host.hook_impls(hook)) for hook in plugins.REGISTER_HOOKS.values())


def test_a_raising_hook_is_traced_and_named(monkeypatch, capsys):
    host = traced_host(monkeypatch)

    class Raises:
        @tlcore.hookimpl
        def tlcore_register_datasets(self, register):
            raise RuntimeError("disk on fire")

    host.register(Raises(), "raiser")
    host.catalog("datasets")
    err = capsys.readouterr().err
    assert f"{TRACE}tlcore_register_datasets plugin=raiser -> raised RuntimeError: disk on fire (" in err
    assert "tlcore: warning: plugin raiser failed in tlcore_register_datasets: RuntimeError: disk on fire" in err


def test_return_values_and_pluggy_calls_are_summarised(monkeypatch, capsys):
    host = traced_host(monkeypatch)

    class Offers:
        @tlcore.hookimpl
        def tlcore_pretrained_weights(self, backbone):
            return None if backbone != "tlcore.testing:tiny" else "weights for " + backbone

    host.register(Offers(), "offers")
    impl = host.hook_impls("tlcore_pretrained_weights")[-1]
    assert host.call_impl(impl, backbone="tlcore.testing:tiny") == "weights for tlcore.testing:tiny"
    assert host.pm.hook.tlcore_pretrained_weights(backbone="other") is None  # straight through pluggy
    err = capsys.readouterr().err
    assert f"{TRACE}tlcore_pretrained_weights plugin=offers -> 'weights for tlcore.testing:tiny' (" in err
    assert f"{TRACE}tlcore_pretrained_weights plugins=offers -> None" in err


@pytest.mark.parametrize("value", [None, "", "0"])
def test_tracing_is_off_unless_asked(monkeypatch, capsys, value):
    if value is None:
        monkeypatch.delenv(plugins.ENV_TRACE, raising=False)
        host = plugins.reset_host(load_installed=False)
    else:
        host = traced_host(monkeypatch, value)
    host.catalog("heads")
    host.pm.hook.tlcore_pretrained_weights(backbone="x")
    assert TRACE not in capsys.readouterr().err


def test_the_command_line_traces_too(monkeypatch, capsys):
    traced_host(monkeypatch)
    core = [command for command in cli.app.registered_commands if command.callback.__module__ == cli.__name__]
    monkeypatch.setattr(cli.app, "registered_commands", core)
    monkeypatch.setattr(cli, "_plugin_commands_added", False)
    code, out, err = run_cli(["list", "heads"], capsys)
    assert code == 0 and "linear" in out
    assert f"{TRACE}tlcore_register_commands plugin=tlcore.commands -> registered eval, predict, export" in err
    assert f"{TRACE}tlcore_register_heads plugin=tlcore.heads -> registered linear, mlp (" in err


def test_a_backbone_factory_that_raises_names_its_plugin_in_one_line(host, tmp_path, capsys):
    class Broken:
        @tlcore.hookimpl
        def tlcore_register_backbones(self, register):
            register("broken:net", self.build)

        def build(self, name, options):
            raise RuntimeError("out of coffee")

    host.register(Broken(), "broken-plugin")
    args = ["run", "--backbone", "broken:net", "--dataset", "tlcore.testing:shapes", "--weights", "none", "--epochs", "1"]
    code, _, err = run_cli([*args, "--output", str(tmp_path / "r")], capsys)
    assert code == 2
    assert err == (
        "tlcore: error: plugin broken-plugin failed to build backbone 'broken:net': RuntimeError: out of coffee\n"
    )
    assert not (tmp_path / "r").exists()
