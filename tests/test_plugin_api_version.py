"""Plugin API versions: the core declares hookspecs.API_VERSION; a plugin's TLCORE_API range must admit it."""

import importlib.metadata
import sys
import types

import pytest

import tlcore
from tlcore import hookspecs, plugins, scaffold
from tlcore.errors import PluginError, UnknownNameError


def plugin_module(name: str, api: object = None) -> types.ModuleType:
    """A module registering the head NAME:head, declaring TLCORE_API = api unless None; importable as NAME."""
    module = types.ModuleType(name)
    if api is not None:
        module.TLCORE_API = api

    @tlcore.hookimpl
    def tlcore_register_heads(register):
        register(f"{name}:head", lambda in_features, num_classes, options: None)

    module.tlcore_register_heads = tlcore_register_heads
    sys.modules[name] = module
    return module


@pytest.fixture
def installed(monkeypatch):
    """Make the host see entry points NAME -> module NAME for the given (name, TLCORE_API) pairs."""
    names = []

    def install(*pairs):
        for name, api in pairs:
            plugin_module(name, api)
            names.append(name)
        points = [importlib.metadata.EntryPoint(name, name, plugins.ENTRY_POINT_GROUP) for name, _ in pairs]
        monkeypatch.setattr(plugins, "_entry_points", lambda: points)

    yield install
    for name in names:
        sys.modules.pop(name, None)


def test_the_core_declares_a_major_minor_version():
    major, minor = hookspecs.API_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()


@pytest.mark.parametrize(
    "spec, version, allowed",
    [
        (">=1,<2", "1.0", True),
        (">=1,<2", "1.7", True),
        (">=1,<2", "2.0", False),
        (">=1.1,<2", "1.0", False),
        (" >= 1 , < 2 ", "1.5", True),
        ("==1", "1.0", True),
        ("==1", "1.1", False),
        ("!=1.0", "1.0", False),
        (">1", "1.0", False),
        (">1", "1.1", True),
        ("<=1", "1.0", True),
        ("<1", "0.9", True),
    ],
)
def test_ranges(spec, version, allowed):
    assert plugins.api_range_allows(spec, version) is allowed


@pytest.mark.parametrize("spec", ["", "1", ">=one", "~=1", ">=1,,<2", ">=1.2.3", "1-2", ">=1;<2"])
def test_unreadable_ranges_are_rejected(spec):
    with pytest.raises(ValueError, match="is not a comparison like '>=1' or '<2.1'"):
        plugins.api_range_allows(spec, "1.0")


def test_an_incompatible_plugin_is_refused_by_name_and_the_rest_load(installed, monkeypatch):
    monkeypatch.setattr(hookspecs, "API_VERSION", "1.3")
    installed(("current", ">=1,<2"), ("future", ">=2,<3"), ("newer", ">=1.4"), ("undeclared", None))
    host = plugins.PluginHost()
    assert host.records["future"].error == (
        "PluginError: plugin future supports tlcore plugin API >=2,<3, but this tlcore provides API 1.3; "
        "install a version of future made for it"
    )
    assert "plugin newer supports tlcore plugin API >=1.4, but this tlcore provides API 1.3" in host.records["newer"].error
    heads = host.catalog("heads")
    for refused in ("future", "newer"):
        assert host.pm.get_plugin(refused) is None and host.records[refused].hooks == []
        with pytest.raises(UnknownNameError):
            heads.resolve(f"{refused}:head")
    for loaded in ("current", "undeclared"):
        assert host.records[loaded].error is None
        assert heads.resolve(f"{loaded}:head").plugin == loaded


def test_a_new_major_version_refuses_plugins_made_for_the_old_one(installed, monkeypatch):
    installed(("old", ">=1,<2"))
    assert plugins.PluginHost().records["old"].error is None
    monkeypatch.setattr(hookspecs, "API_VERSION", "2.0")
    assert "provides API 2.0" in plugins.PluginHost().records["old"].error


@pytest.mark.parametrize("api, why", [("1.x", "'1.x' is not a comparison"), (1, "it is a int, not a string")])
def test_an_unreadable_declaration_is_refused_with_its_value(installed, api, why):
    installed(("odd", api))
    error = plugins.PluginHost().records["odd"].error
    assert error.startswith(f"PluginError: plugin odd declares TLCORE_API = {api!r}, which is not a version range like")
    assert why in error


def test_runtime_registration_checks_the_version_too(host):
    class Future:
        TLCORE_API = ">=99"

        @tlcore.hookimpl
        def tlcore_register_heads(self, register):
            register("future:head", lambda in_features, num_classes, options: None)

    with pytest.raises(PluginError, match=r"plugin future supports tlcore plugin API >=99, but this tlcore provides API"):
        tlcore.register(Future(), "future")
    assert "future" not in host.records and host.pm.get_plugin("future") is None


def test_new_plugins_declare_the_current_major_version():
    major = int(hookspecs.API_VERSION.split(".")[0])
    assert scaffold.api_range() == f">={major},<{major + 1}"
    assert plugins.api_range_allows(scaffold.api_range())
