"""One public API: plugins and examples import only from `tlcore`; everything they need is there, and light."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import tlcore

REPO = Path(__file__).resolve().parents[1]
# The code a plugin author reads as the model: the shipped plugins' packages and the examples (their tests may
# reach inside tlcore, as tlcore's own tests do).
SOURCES = sorted(
    path
    for pattern in ("plugins/*/tlcore_*/**/*.py", "examples/*.py", "examples/*/tlcore_*/**/*.py")
    for path in REPO.glob(pattern)
)


def submodule_imports(source: str) -> list[str]:
    """``tlcore.<submodule>`` paths a module imports.

    Found: ``from tlcore.x import y``, ``import tlcore.x``, ``from tlcore import x`` where x is a
    submodule, and ``tlcore.x.y`` attribute chains used after ``import tlcore``.
    """
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("tlcore."):
                found.append(node.module)
            elif node.module == "tlcore":
                found += [f"tlcore.{alias.name}" for alias in node.names if _is_submodule(alias.name)]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("tlcore.")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tlcore":
            if _is_submodule(node.attr):
                found.append(f"tlcore.{node.attr}")
    return found


def _is_submodule(name: str) -> bool:
    return (Path(tlcore.__file__).parent / f"{name}.py").is_file() or (Path(tlcore.__file__).parent / name).is_dir()


def test_there_are_sources_to_check():
    assert len(SOURCES) >= 20 and any("tlcore_viz" in str(path) for path in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_plugins_and_examples_import_only_the_public_api(path):
    found = submodule_imports(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)} imports {', '.join(found)}; import these names from `tlcore`"


def test_the_scan_sees_every_kind_of_submodule_import():
    source = (
        "import tlcore\nimport tlcore.data\nfrom tlcore.errors import DataError\nfrom tlcore import weights, Backbone\n"
        "def f():\n    from tlcore.callbacks.base import Callback\n    return tlcore.files.atomic_write_bytes\n"
    )
    assert sorted(submodule_imports(source)) == sorted(
        ["tlcore.data", "tlcore.errors", "tlcore.weights", "tlcore.callbacks.base", "tlcore.files"]
    )


def test_every_public_name_resolves_and_old_paths_are_the_same_objects():
    for name in tlcore.__all__:
        assert getattr(tlcore, name) is not None, name
    assert sorted(tlcore.__all__) == sorted(set(tlcore.__all__))
    old_paths = {
        "Callback": "tlcore.callbacks.base",
        "RunState": "tlcore.state",
        "RunConfig": "tlcore.config",
        "FreezePolicy": "tlcore.freeze",
        "FreezeOptions": "tlcore.freeze",
        "HeadOptions": "tlcore.heads",
        "Register": "tlcore.registry",
        "load_into_backbone": "tlcore.weights",
        "decode_image": "tlcore.images",
        "load_checkpoint": "tlcore.inference",
        "BackboneFactory": "tlcore.hookspecs",
    }
    for name, module in old_paths.items():
        assert getattr(importlib.import_module(module), name) is getattr(tlcore, name), name
    assert set(old_paths) <= set(dir(tlcore))


def test_factory_protocols_describe_the_factories():
    from tlcore.testing import tiny_backbone

    def backbone_factory(name: str, options: tlcore.BackboneOptions) -> tlcore.Backbone:
        return tiny_backbone(name, options)

    factory: tlcore.BackboneFactory = backbone_factory  # what a type checker accepts
    assert factory("x:y", tlcore.BackboneOptions()).name == "x:y"
    assert tlcore.BackboneFactory.__call__.__annotations__["return"] == "Backbone"


def test_import_tlcore_stays_light():
    code = (
        "import sys, tlcore\n"
        "heavy = ['tlcore.train', 'tlcore.evaluation', 'tlcore.inference', 'tlcore.images', 'typer', 'tlcore.state']\n"
        "print(','.join(name for name in heavy if name in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
