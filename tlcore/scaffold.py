"""`tlcore new-plugin NAME`: write the skeleton of a plugin package that installs, is listed and passes its tests.

The skeleton registers one backbone and one dataset under the plugin's own
prefix (``NAME:``), declares the plugin API range it is written for, and has
tests built on tlcore's pytest fixtures. It is a built-in part: its command is
added through ``tlcore_register_commands`` like any plugin's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import typer

from tlcore import hookspecs
from tlcore.errors import ConfigError
from tlcore.hookspecs import hookimpl
from tlcore.plugins import get_host

# Lowercase words joined by single hyphens or underscores; it becomes the entry-point name and the names' prefix.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME_LENGTH = 40


@dataclass(frozen=True)
class PluginNames:
    """The names one plugin name gives rise to."""

    name: str  # entry-point name and prefix of every registered name: "my-models"
    distribution: str  # "tlcore-my-models"
    package: str  # "tlcore_my_models"


def plugin_names(raw: str) -> PluginNames:
    """Check NAME and derive the distribution and package names; a leading ``tlcore-`` is accepted and dropped."""
    name = raw.strip()
    for prefix in ("tlcore-", "tlcore_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH or name == "tlcore":
        raise ConfigError(
            f"plugin name {raw!r} is not accepted: use lowercase letters and digits, starting with a letter, "
            f"words joined by single - or _ (at most {MAX_NAME_LENGTH} characters), e.g. my-models"
        )
    return PluginNames(name, f"tlcore-{name.replace('_', '-')}", f"tlcore_{name.replace('-', '_')}")


def api_range() -> str:
    """The TLCORE_API range a new plugin declares: the core's current major version."""
    major = int(str(getattr(hookspecs, "API_VERSION", "1.0")).split(".")[0])
    return f">={major},<{major + 1}"


def render(names: PluginNames) -> dict[str, str]:
    """Relative path to contents of every file of the skeleton."""
    values = {
        "__NAME__": names.name,
        "__DIST__": names.distribution,
        "__PACKAGE__": names.package,
        "__API__": api_range(),
    }
    files = {}
    for path, template in TEMPLATES.items():
        for token, value in values.items():
            path, template = path.replace(token, value), template.replace(token, value)
        files[path] = template.lstrip("\n")
    return files


def write_skeleton(raw_name: str, output: Path | None = None) -> tuple[PluginNames, Path]:
    """Write the package into ``output`` (default ``./tlcore-NAME``), which must be absent or an empty folder."""
    names = plugin_names(raw_name)
    taken = get_host().records.get(names.name)
    if taken is not None:
        owner = taken.distribution or taken.source
        raise ConfigError(f"a plugin named {names.name!r} is already loaded (from {owner}); choose another name")
    folder = Path(output) if output is not None else Path.cwd() / names.distribution
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} already exists and is not an empty folder; nothing was written")
    for relative, text in render(names).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return names, folder


def new_plugin_command(
    name: str = typer.Argument(..., help="the plugin's name, e.g. my-models (its package is tlcore-my-models)"),
    output: Path = typer.Option(None, "--output", help="folder to create (default: ./tlcore-NAME); must be empty"),
) -> None:
    """Write a new plugin package: a backbone and a dataset, its entry point, tests and a README."""
    names, folder = write_skeleton(name, output)
    typer.echo(f"created {names.distribution} in {folder} (entry point {names.name!r}, package {names.package})")
    typer.echo(f"next: pip install -e '{folder}[test]' && pytest {folder / 'tests'} && tlcore plugins")


@hookimpl
def tlcore_register_commands(app: typer.Typer) -> None:
    """Add `tlcore new-plugin`."""
    app.command("new-plugin")(new_plugin_command)


# The skeleton. __NAME__, __DIST__, __PACKAGE__ and __API__ are replaced; the code is ruff-clean at line length 100.
TEMPLATES = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "A tlcore plugin."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["tlcore>=0.1", "torch>=2.4"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How tlcore finds the plugin: entry-point name = the module holding the hook implementations.
[project.entry-points.tlcore]
__NAME__ = "__PACKAGE__"

[tool.setuptools.packages.find]
include = ["__PACKAGE__*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
# tlcore's fixtures (tlcore_host, tlcore_register, tlcore_run, ...), also where its pytest11 entry point is missing.
addopts = "-p tlcore.pytest_plugin"

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F", "W", "I", "UP", "B"]
""",
    "README.md": """
# __DIST__

A tlcore plugin. It registers:

- backbone `__NAME__:small`: a small convnet (random init);
- dataset `__NAME__:toy`: two classes of synthetic images made in code.

```bash
pip install -e '.[test]'
tlcore plugins                       # __NAME__ is listed with its hooks
tlcore run --backbone __NAME__:small --dataset __NAME__:toy --epochs 2  # random init: no --weights
pytest
```

Every hook, the backbone contract and the naming rules are in tlcore's docs/plugins.md.
""",
    "__PACKAGE__/__init__.py": '''
"""__DIST__: a tlcore plugin.

tlcore loads this module through the `tlcore` entry point in pyproject.toml and calls the
hook implementations below. Every registered name starts with "__NAME__:".
"""

from tlcore import hookimpl

from __PACKAGE__.backbone import build_small
from __PACKAGE__.dataset import build_toy

# The tlcore plugin API versions this plugin is written for (comma-separated comparisons).
TLCORE_API = "__API__"


@hookimpl
def tlcore_register_backbones(register):
    """Register the plugin's backbones."""
    register("__NAME__:small", build_small, description="small convnet, 32 px", pretrained=False)


@hookimpl
def tlcore_register_datasets(register):
    """Register the plugin's datasets."""
    register("__NAME__:toy", build_toy, description="two synthetic classes, 32x32")


# More hooks: tlcore_register_heads, tlcore_register_freeze_policies, tlcore_register_callbacks,
# tlcore_register_commands, tlcore_pretrained_weights (see docs/plugins.md).
''',
    "__PACKAGE__/backbone.py": '''
"""__NAME__:small, delivered under tlcore's backbone contract."""

from collections import OrderedDict

from tlcore import Backbone, BackboneOptions, LayerGroup, Preprocessing, WeightsError
from torch import nn


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def build_small(name: str, options: BackboneOptions) -> Backbone:
    """``factory(name, options) -> Backbone``: images (N, 3, H, W) to pooled features (N, 32)."""
    if options.pretrained:
        raise WeightsError(f"{name} has no pretrained weights; use --weights none")
    module = nn.Sequential(
        OrderedDict(
            stem=conv_bn(3, 16, 2),
            stage1=conv_bn(16, 32, 2),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        )
    )
    return Backbone(
        name=name,
        module=module,
        feature_dim=32,
        preprocessing=Preprocessing(
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32, crop_pct=1.0, min_size=8
        ),
        # Ordered from the input; every parameter belongs to exactly one group.
        layer_groups=[LayerGroup("stem", ("stem",)), LayerGroup("stage1", ("stage1",))],
    )
''',
    "__PACKAGE__/dataset.py": '''
"""__NAME__:toy, a dataset made in code."""

import torch
from tlcore import DatasetOptions, DatasetSplits, TensorImageDataset


def build_toy(name: str, options: DatasetOptions) -> DatasetSplits:
    """``factory(name, options) -> DatasetSplits``: dark or bright noisy 32x32 images."""
    generator = torch.Generator().manual_seed(options.seed)
    labels = torch.arange(2).repeat(40)
    images = torch.randint(0, 128, (len(labels), 3, 32, 32), generator=generator)
    images = (images + 100 * labels[:, None, None, None]).to(torch.uint8)
    cut = round(len(labels) * (1 - options.val_fraction))
    return DatasetSplits(
        classes=["dark", "bright"],
        train=TensorImageDataset(images[:cut], labels[:cut]),
        val=TensorImageDataset(images[cut:], labels[cut:]),
    )
''',
    "tests/test_plugin.py": '''
"""Tests of __DIST__, with tlcore's pytest fixtures."""

import importlib.metadata

import pytest
import torch
from tlcore import BackboneOptions, DatasetOptions

import __PACKAGE__


@pytest.fixture
def plugin(tlcore_register):
    """The plugin registered on a fresh tlcore host, as its entry point registers it."""
    tlcore_register(__PACKAGE__, "__NAME__")


def test_names_are_registered(plugin, tlcore_host):
    assert tlcore_host.catalog("backbones").resolve("__NAME__:small").plugin == "__NAME__"
    assert tlcore_host.catalog("datasets").resolve("__NAME__:toy").plugin == "__NAME__"


def test_backbone_meets_the_contract(plugin, tlcore_host):
    entry = tlcore_host.catalog("backbones").resolve("__NAME__:small")
    backbone = entry.factory("__NAME__:small", BackboneOptions())
    backbone.validate()
    assert backbone.module(torch.zeros(2, 3, 32, 32)).shape == (2, backbone.feature_dim)


def test_dataset_has_both_splits(plugin, tlcore_host):
    entry = tlcore_host.catalog("datasets").resolve("__NAME__:toy")
    data = entry.factory("__NAME__:toy", DatasetOptions())
    assert len(data.classes) == 2 and len(data.train) > 0 and len(data.val) > 0


def test_a_short_run(plugin, tlcore_run):
    result = tlcore_run(backbone="__NAME__:small", dataset="__NAME__:toy", epochs=2)
    assert len(result.history) == 2
    assert (result.output_dir / "best.safetensors").is_file()


def installed() -> bool:
    try:
        importlib.metadata.distribution("__DIST__")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not installed(), reason="__DIST__ is not installed")
def test_entry_point_loads(tlcore_installed):
    record = tlcore_installed("__NAME__").records["__NAME__"]
    assert record.error is None and record.distribution == "__DIST__"
''',
}
