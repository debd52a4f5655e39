"""Start-up cost: loading the first-party plugins imports no heavy library; those load on first use.

Each check runs in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Libraries that take from a tenth of a second (PIL, numpy) to seconds (torch, timm, torchvision's models) to import.
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "tensorboard", "sklearn", "scipy", "PIL", "numpy", "safetensors")


def fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return sorted({name.split(".")[0] for name in modules if name.split(".")[0] in HEAVY})


def test_loading_the_plugins_and_calling_their_registration_hooks_imports_nothing_heavy():
    result = fresh("""
import json, sys
import typer
import tlcore, tlcore.registry
before = set(sys.modules)  # whatever tlcore itself imports is not the plugins' doing
import tlcore_datasets, tlcore_timm, tlcore_torchvision, tlcore_viz
from tlcore.registry import Catalog, Register
for plugin in (tlcore_datasets, tlcore_timm, tlcore_torchvision, tlcore_viz):
    for kind in ("backbones", "datasets", "callbacks"):
        hook = getattr(plugin, "tlcore_register_" + kind, None)
        if hook is not None:
            hook(Register(Catalog(kind), plugin.__name__))
    if hasattr(plugin, "tlcore_register_commands"):
        plugin.tlcore_register_commands(typer.Typer())
offered = tlcore_timm.tlcore_pretrained_weights("torchvision:resnet18")
print(json.dumps({"new": sorted(set(sys.modules) - before), "offered": offered is None}))
""")
    assert heavy(result["new"]) == []
    assert result["offered"]  # another provider's name is answered without importing the Lite0 module


def test_help_imports_none_of_the_providers_libraries():
    result = fresh("""
import json, sys
from tlcore.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(json.dumps({"modules": sorted(sys.modules)}))
""")
    loaded = heavy(result["modules"])
    for name in ("timm", "torchvision", "matplotlib", "tensorboard", "sklearn", "scipy"):
        assert name not in loaded, name


def test_lazy_plugin_attributes_and_factories_still_work():
    result = fresh("""
import json
import tlcore_datasets, tlcore_torchvision
from tlcore.dataset import DatasetOptions
from tlcore.registry import Catalog, Register
catalog = Catalog("datasets")
tlcore_datasets.tlcore_register_datasets(Register(catalog, "datasets"))
digits = catalog.resolve("digits").factory("digits", DatasetOptions(seed=0))
backbones = Catalog("backbones")
tlcore_torchvision.tlcore_register_backbones(Register(backbones, "torchvision"))
entry = backbones.resolve("torchvision:resnet18")
unknown = backbones.families[0].resolve("torchvision:nope")
print(json.dumps({"digits": len(digits.train) + len(digits.val), "loader": tlcore_datasets.load_digits_dataset.__module__,
                  "factory": entry.factory is tlcore_torchvision.factory, "unknown": unknown is None}))
""")
    assert result == {"digits": 1797, "loader": "tlcore_datasets.digits", "factory": True, "unknown": True}


COMMANDS_WITHOUT_TORCH = (["--help"], ["plugins"], ["list", "heads"], ["list", "freeze"], ["list", "callbacks"])


def test_commands_that_train_nothing_import_no_torch():
    """`tlcore --help`, `plugins` and the listings of heads, freeze policies and callbacks: no torch, no NumPy.

    The built-in parts (heads, freeze policies, callbacks) are loaded for every
    command; they import torch only when a head, policy or checkpoint is made.
    """
    result = fresh(f"""
import contextlib, io, json, sys
from tlcore.cli import main
loaded = {{}}
for args in {COMMANDS_WITHOUT_TORCH!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(args)
        except SystemExit as done:
            assert done.code in (0, None), (args, done.code)
    loaded[" ".join(args)] = [name for name in sys.modules if name.split(".")[0] in {HEAVY!r}]
    assert out.getvalue(), args
print(json.dumps(loaded))
""")
    assert result == {" ".join(args): [] for args in COMMANDS_WITHOUT_TORCH}


def test_the_built_in_parts_still_build_torch_objects_on_first_use():
    result = fresh("""
import json, sys
from tlcore import plugins
host = plugins.PluginHost(load_installed=False)
light = [name for name in ("torch", "safetensors") if name in sys.modules]
from tlcore.freeze import FreezeOptions, NORM_TYPES, norm_types
from tlcore.heads import HeadOptions
head = host.catalog("heads").resolve("mlp").factory(4, 3, HeadOptions(hidden=5))
policy = host.catalog("freeze").resolve("norm").factory(FreezeOptions())
import torch
print(json.dumps({"light": light, "head": [tuple(p.shape) for p in head.parameters()],
                  "norm": policy.trains_parameter("weight", torch.nn.BatchNorm2d(2)),
                  "conv": policy.trains_parameter("weight", torch.nn.Conv2d(2, 2, 1)),
                  "same": NORM_TYPES is norm_types()}))
""")
    assert result == {"light": [], "head": [[5, 4], [5], [3, 5], [3]], "norm": True, "conv": False, "same": True}


def test_the_command_itself_with_its_start_up_hooks_imports_no_torch_for_help():
    """`python -m tlcore --help` as a user runs it (main() without argv: the import hook and heap.start_up are on)."""
    probe = fresh("""
import json, runpy, sys
sys.argv = ["tlcore", "--help"]
try:
    runpy.run_module("tlcore", run_name="__main__")
except SystemExit:
    pass
from tlcore import heap, import_hooks
print(json.dumps({"modules": sorted(sys.modules), "hooked": any(f is import_hooks._FINDER for f in sys.meta_path),
                  "starting": heap.starting()}))
""")
    assert heavy(probe["modules"]) == [] and "tlcore.cli" in probe["modules"]
    assert probe["hooked"] and probe["starting"]  # nothing built: the start-up never ended, and nothing was frozen
