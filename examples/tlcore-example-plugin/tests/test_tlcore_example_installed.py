"""The installed package: tlcore finds it through its entry point and loads it without error."""

import importlib.metadata

import pytest


def installed() -> bool:
    try:
        importlib.metadata.distribution("tlcore-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not installed(), reason="tlcore-example-plugin is not installed (pip install the package first)")
def test_entry_point_loads_every_hook(tlcore_installed):
    host = tlcore_installed("example")
    record = host.records["example"]
    assert record.error is None
    assert record.distribution == "tlcore-example-plugin" and record.version == "0.1.0"
    assert record.hooks == [
        "tlcore_register_backbones",
        "tlcore_register_callbacks",
        "tlcore_register_commands",
        "tlcore_register_datasets",
        "tlcore_register_freeze_policies",
    ]
    assert host.catalog("backbones").resolve("example:smallnet").plugin == "example"
