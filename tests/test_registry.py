"""Names: exact first, then providers' patterns; conflicts name both plugins; unknown names suggest."""

import pytest

from tlcore.errors import NameConflictError, PluginError, UnknownNameError
from tlcore.registry import Catalog, Register


def factory(*args):
    return args


def test_exact_name_resolves_to_its_plugin():
    catalog = Catalog("backbones")
    Register(catalog, "alpha")("alpha:net", factory, description="a net")
    entry = catalog.resolve("alpha:net")
    assert entry.plugin == "alpha" and entry.factory is factory


def test_family_resolves_names_it_knows_only():
    catalog = Catalog("backbones")
    known = {"zoo:a", "zoo:b"}
    Register(catalog, "zoo").family("zoo:*", lambda n: factory if n in known else None, lambda: sorted(known))
    assert catalog.resolve("zoo:b").plugin == "zoo"
    with pytest.raises(UnknownNameError, match="did you mean zoo:a"):
        catalog.resolve("zoo:aa")


def test_exact_name_wins_over_family():
    catalog = Catalog("backbones")
    Register(catalog, "zoo").family("zoo:*", lambda n: factory, lambda: [])
    special = lambda *a: "special"  # noqa: E731
    Register(catalog, "mine")("zoo:x", special)
    assert catalog.resolve("zoo:x").plugin == "mine"


def test_duplicate_exact_name_names_both_plugins():
    catalog = Catalog("datasets")
    Register(catalog, "first")("shared", factory)
    Register(catalog, "second")("shared", factory)
    with pytest.raises(NameConflictError, match="first and second"):
        catalog.resolve("shared")
    row = catalog.listing("shared")[0]
    assert row.plugin == "CONFLICT: first, second"


def test_two_families_answering_the_same_name_conflict():
    catalog = Catalog("backbones")
    Register(catalog, "one").family("zoo:*", lambda n: factory, lambda: ["zoo:x"])
    Register(catalog, "two").family("*", lambda n: factory, lambda: ["zoo:x"])
    with pytest.raises(NameConflictError, match="one and two"):
        catalog.resolve("zoo:x")


def test_unknown_name_with_few_entries_lists_them():
    catalog = Catalog("heads")
    Register(catalog, "core")("linear", factory)
    with pytest.raises(UnknownNameError, match="unknown head 'xyz'; accepted: linear"):
        catalog.resolve("xyz")


def test_listing_filters_with_fnmatch_and_sorts():
    catalog = Catalog("backbones")
    Register(catalog, "zoo").family("zoo:*", lambda n: factory, lambda: ["zoo:resnet50", "zoo:resnet18", "zoo:vit"])
    Register(catalog, "mine")("mine:resnet9", factory)
    assert [r.name for r in catalog.listing("*resnet*")] == ["mine:resnet9", "zoo:resnet18", "zoo:resnet50"]


def test_invalid_registration_names_the_plugin():
    with pytest.raises(PluginError, match="plugin bad registered an invalid"):
        Register(Catalog("heads"), "bad")("", factory)


def test_family_that_raises_is_named():
    catalog = Catalog("backbones")

    def broken(name):
        raise RuntimeError("boom")

    Register(catalog, "flaky").family("f:*", broken, lambda: [])
    with pytest.raises(PluginError, match="plugin flaky failed to resolve"):
        catalog.resolve("f:x")
