"""The one order-and-conflict rule of the plugin host, checked with installed (fake) plugin distributions.

Plugins registered later are asked first, built-ins last (as pluggy's firstresult); names are never decided by
order: built-in commands cannot be replaced, and two plugins claiming one name is an error naming both.
"""

from __future__ import annotations

import json
import sys

import pytest

from tlcore import cli
from tlcore.build import offered_pretrained_weights
from tlcore.errors import NameConflictError
from tlcore.testing import write_fake_distribution

# Two plugins that both offer weights, both add the command `order-x` and the dataset `order:shared`;
# A also tries every built-in command name. Entry points load sorted by name: order-a first, then order-b.
PLUGIN = """
import tlcore
import typer

BUILTIN = {builtin!r}


@tlcore.hookimpl
def tlcore_pretrained_weights(backbone):
    if backbone == "{raise_for}":
        raise RuntimeError("weights index unreadable")
    return tlcore.PretrainedWeights(source="{name} weights", load=dict)


@tlcore.hookimpl
def tlcore_register_commands(app):
    for name in ["order-x", "{name}-own", *BUILTIN]:
        app.command(name)(lambda: typer.echo("{name} ran"))


@tlcore.hookimpl
def tlcore_register_datasets(register):
    register("order:shared", lambda name, options: None)
    {extra}
"""
BUILTIN_COMMANDS = ["eval", "predict", "export", "lr-find", "new-plugin", "run", "list", "info", "plugins", "plan", "report"]
MODULES = ("tlcore_order_a", "tlcore_order_b", "tlcore_order_typo")


@pytest.fixture
def installed(tlcore_installed, tmp_path, monkeypatch):
    """A host loading the fake distributions tlcore-order-a and tlcore-order-b (and tlcore-viz, for `report`)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "tlcore_order_a.py").write_text(PLUGIN.format(name="order-a", builtin=BUILTIN_COMMANDS, raise_for="", extra=""))
    (site / "tlcore_order_b.py").write_text(
        PLUGIN.format(
            name="order-b",
            builtin=[],
            raise_for="raises:net",
            extra='raise RuntimeError("datasets index unreadable\\nsecond line of the reason")',
        )
    )
    write_fake_distribution(site, "tlcore-order-a", {"order-a": "tlcore_order_a"})
    write_fake_distribution(site, "tlcore-order-b", {"order-b": "tlcore_order_b"})
    monkeypatch.syspath_prepend(str(site))
    yield lambda *extra: tlcore_installed("order-a", "order-b", "viz", *extra), site
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def cli_run(monkeypatch, capsys):
    """``tlcore ARGS`` in-process against the process-wide host, adding plugin commands afresh."""
    core = [command for command in cli.app.registered_commands if command.callback.__module__ == cli.__name__]

    def run(*args):
        monkeypatch.setattr(cli.app, "registered_commands", list(core))
        monkeypatch.setattr(cli, "_plugin_commands_added", False)
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_later_plugins_are_asked_first_and_builtins_last(installed):
    host = installed[0]()
    assert [host.records[name].source for name in ("order-a", "order-b")] == ["entry point", "entry point"]
    offered = offered_pretrained_weights("any:net", host)
    assert offered.source == "order-b weights"  # registered after order-a
    assert host.pm.hook.tlcore_pretrained_weights(backbone="any:net").source == offered.source  # pluggy agrees
    order = [impl.plugin_name for impl in host.hook_impls("tlcore_register_commands")]
    assert order.index("order-b") < order.index("order-a") < order.index("tlcore.commands")
    assert order[-1] in {"tlcore.commands", "tlcore.scaffold"}  # built-in parts are asked last


def test_a_plugin_that_raises_is_reported_and_the_next_one_answers(installed, capsys):
    host = installed[0]()
    assert offered_pretrained_weights("raises:net", host).source == "order-a weights"
    assert "plugin order-b failed in tlcore_pretrained_weights: RuntimeError: weights index unreadable" in (
        capsys.readouterr().err
    )


def test_builtin_commands_cannot_be_replaced_and_the_plugin_is_blamed(installed, cli_run):
    installed[0]()
    code, out, err = cli_run("--help")
    assert code == 0
    for name in BUILTIN_COMMANDS:
        owner = {"eval": "tlcore.commands", "predict": "tlcore.commands", "export": "tlcore.commands"}.get(name)
        owner = owner or {"lr-find": "tlcore.commands"}.get(name)
        owner = owner or {"new-plugin": "tlcore.scaffold", "report": "viz"}.get(name, "tlcore")
        assert (
            f"tlcore: warning: plugin order-a tried to add command {name!r}, which belongs to {owner}; "
            f"its command was not installed (prefix plugin commands with the plugin's name, e.g. 'order-a-{name}')"
        ) in err
    by_name = {command.name: command for command in cli.app.registered_commands}
    assert by_name["eval"].callback.__module__ == "tlcore.commands"
    assert by_name["report"].callback.__module__.startswith("tlcore_viz")
    code, out, err = cli_run("order-a-own")  # its other commands are installed
    assert (code, out) == (0, "order-a ran\n")


def test_two_plugins_claiming_one_name_is_an_error_naming_both(installed, cli_run):
    host = installed[0]()
    code, out, err = cli_run("order-x", "--anything")
    assert code == 2 and out == ""
    assert err.endswith(
        "tlcore: error: command 'order-x' is registered by several plugins: order-a and order-b; "
        "disable one with TLCORE_DISABLE_PLUGINS\n"
    )
    with pytest.raises(NameConflictError, match="'order:shared' is registered by several plugins: order-a and order-b"):
        host.catalog("datasets").resolve("order:shared")
    code, out, _ = cli_run("plugins", "--json")
    records = {record["name"]: record for record in json.loads(out)}
    assert "command 'order-x' is also registered by plugin order-b; neither is installed" in records["order-a"]["warnings"]


def test_plugins_shows_a_register_hook_error_whole(installed, cli_run):
    installed[0]()
    code, out, _ = cli_run("plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "source", "distribution", "hooks", "or", "error"]
    row = next(index for index, line in enumerate(lines) if line.startswith("order-b "))
    assert lines[row].endswith(
        "ERROR: plugin order-b failed in tlcore_register_datasets: RuntimeError: datasets index unreadable"
    )
    assert lines[row + 1].strip() == "second line of the reason"  # the whole message, not its first line


def test_a_second_distribution_with_a_taken_name_is_reported(installed, cli_run, capsys):
    make, site = installed
    write_fake_distribution(site, "tlcore-order-impostor", {"order-a": "tlcore_order_b"}, version="9.9")
    host = make()
    loaded = host.records["order-a"].distribution
    other = "tlcore-order-impostor 9.9" if loaded == "tlcore-order-a" else "tlcore-order-a 1.0"
    message = (
        f"entry point 'order-a' of {other} was not loaded: the name is taken by {loaded} "
        f"{host.records['order-a'].version}; uninstall one of them (plugin names must be unique)"
    )
    assert f"tlcore: warning: {message}" in capsys.readouterr().err
    assert host.records["order-a"].warnings == [message]
    code, out, _ = cli_run("plugins")
    assert f"WARNING: {message}" in out


def test_a_misspelled_hook_gets_a_did_you_mean(installed):
    make, site = installed
    (site / "tlcore_order_typo.py").write_text(
        "import tlcore\n\n@tlcore.hookimpl\ndef tlcore_register_backbone(register):\n    pass\n"
    )
    write_fake_distribution(site, "tlcore-order-typo", {"order-typo": "tlcore_order_typo"})
    host = make("order-typo")
    assert host.records["order-typo"].error == (
        "PluginError: unknown hooks: tlcore_register_backbone (did you mean tlcore_register_backbones?)"
    )
