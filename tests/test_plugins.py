"""The plugin manager: built-ins through hooks, entry points one by one, env control, run-time registration."""

import importlib.metadata
import sys
import types

import pytest

import tlcore
from tlcore import plugins
from tlcore.errors import PluginError, UnknownNameError


def make_module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(source, module.__dict__)
    sys.modules[name] = module
    return module


GOOD_PLUGIN = """
from tlcore import hookimpl

@hookimpl
def tlcore_register_heads(register):
    register("good:head", lambda in_features, num_classes, options: None)
"""


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Make the plugin host see the given (name, module) entry points."""

    def install(pairs):
        points = [importlib.metadata.EntryPoint(name, module, plugins.ENTRY_POINT_GROUP) for name, module in pairs]
        monkeypatch.setattr(plugins, "_entry_points", lambda: points)

    yield install
    for name in ("tlcore_test_good", "tlcore_test_typo"):
        sys.modules.pop(name, None)


def test_builtins_register_through_the_same_hooks():
    host = plugins.PluginHost(load_installed=False)
    assert host.records["tlcore.heads"].source == "builtin"
    assert "tlcore_register_heads" in host.records["tlcore.heads"].hooks
    assert {"linear", "mlp"} <= {row.name for row in host.catalog("heads").listing()}
    assert {"none", "backbone"} <= {row.name for row in host.catalog("freeze").listing()}


def test_broken_plugin_is_reported_and_the_rest_work(fake_entry_points):
    make_module("tlcore_test_good", GOOD_PLUGIN)
    fake_entry_points([("broken", "tlcore_test_missing_module"), ("good", "tlcore_test_good")])
    host = plugins.PluginHost()
    assert "ModuleNotFoundError" in host.records["broken"].error
    assert host.records["good"].error is None
    assert host.catalog("heads").resolve("good:head").plugin == "good"
    with pytest.raises(UnknownNameError, match=r"plugins that failed to load: broken; see `tlcore plugins`"):
        host.catalog("backbones").resolve("broken:net")


def test_misspelled_hook_is_refused_with_its_name(fake_entry_points):
    make_module(
        "tlcore_test_typo",
        "from tlcore import hookimpl\n@hookimpl\ndef tlcore_register_head(register):\n    pass\n",
    )
    fake_entry_points([("typo", "tlcore_test_typo")])
    host = plugins.PluginHost()
    assert "tlcore_register_head" in host.records["typo"].error


def test_env_selects_and_disables_plugins(fake_entry_points, monkeypatch):
    make_module("tlcore_test_good", GOOD_PLUGIN)
    fake_entry_points([("good", "tlcore_test_good")])
    monkeypatch.setenv(plugins.ENV_SELECT, "")
    assert "good" not in plugins.PluginHost().records
    monkeypatch.setenv(plugins.ENV_SELECT, "good")
    assert "good" in plugins.PluginHost().records
    monkeypatch.delenv(plugins.ENV_SELECT)
    monkeypatch.setenv(plugins.ENV_DISABLE, "good,tlcore.heads")
    host = plugins.PluginHost()
    assert "good" not in host.records and "tlcore.heads" not in host.records
    with pytest.raises(UnknownNameError):
        host.catalog("heads").resolve("linear")


def test_runtime_registration_takes_effect_at_once_and_can_be_undone(host):
    class Extra:
        @tlcore.hookimpl
        def tlcore_register_heads(self, register):
            register("extra:head", lambda in_features, num_classes, options: None)

    plugin = Extra()
    name = tlcore.register(plugin)  # the module-level API uses the process-wide host
    try:
        assert plugins.get_host() is host
        assert host.catalog("heads").resolve("extra:head").plugin == name
    finally:
        tlcore.unregister(plugin)
    with pytest.raises(UnknownNameError):
        host.catalog("heads").resolve("extra:head")
    with tlcore.registered(Extra(), "temp"):
        assert host.catalog("heads").resolve("extra:head").plugin == "temp"
    assert "temp" not in host.records


def test_registering_the_same_name_twice_is_an_error(host):
    with pytest.raises(PluginError, match="already registered"):
        host.register(object(), "tlcore.testing")


def test_plugin_raising_in_a_hook_is_named_and_others_keep_working(host, capsys):
    class Raises:
        @tlcore.hookimpl
        def tlcore_register_datasets(self, register):
            raise RuntimeError("disk on fire")

    host.register(Raises(), "raiser")
    assert host.catalog("datasets").resolve("tlcore.testing:shapes").plugin == "tlcore.testing"
    assert "plugin raiser failed in tlcore_register_datasets: RuntimeError: disk on fire" in capsys.readouterr().err
    assert "disk on fire" in host.records["raiser"].error


def test_a_hook_may_take_fewer_arguments_than_its_spec(host):
    class NoArgs:
        @tlcore.hookimpl
        def tlcore_pretrained_weights(self):
            return None

    host.register(NoArgs(), "noargs")
    assert host.call_impl(host.hook_impls("tlcore_pretrained_weights")[-1], backbone="x") is None
