"""tlcore.import_hooks: the tlcore command imports torchvision and timm without TorchDynamo, changing nothing else.

Each check runs in a fresh interpreter (this test process has imported TorchDynamo already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def fresh(code: str, *args: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A torchvision:resnet18 checkpoint (random weights, 32 px) and one JPEG to classify."""
    from tlcore.backbone import BackboneOptions
    from tlcore.build import make_backbone
    from tlcore.checkpoint import CheckpointInfo, save_checkpoint
    from tlcore.inference import build_model
    from tlcore.plugins import PluginHost

    folder = tmp_path_factory.mktemp("predict")
    host = PluginHost()  # the installed plugins, whatever host an earlier test left as the process's
    backbone = make_backbone("torchvision:resnet18", host, BackboneOptions(pretrained=False, image_size=32))
    info = CheckpointInfo(
        backbone="torchvision:resnet18", classes=["ants", "bees"], head="linear", head_options={},
        preprocessing=backbone.preprocessing.to_dict(), image_size=32, epoch=1, metrics={}, weights="none",
    )
    save_checkpoint(folder / "best.safetensors", build_model(info, host), info)
    Image.new("RGB", (48, 40), (200, 30, 60)).save(folder / "ant.jpg", quality=90)
    return folder / "best.safetensors", folder / "ant.jpg"


# `python -m tlcore ARGS` as the user runs it (main() without argv), reporting its modules as it exits.
AS_THE_COMMAND = """
import atexit, gc, json, runpy, sys
full = []  # for each full garbage collection: how many objects were frozen when it started (tlcore.heap)
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(gc.get_freeze_count()))
atexit.register(lambda: print(json.dumps({"modules": sorted(sys.modules), "full": full, "frozen": gc.get_freeze_count(),
                                          "thresholds": gc.get_threshold()})))
sys.argv = ["tlcore", *sys.argv[1:]]
runpy.run_module("tlcore", run_name="__main__")
"""


@pytest.fixture(scope="module")
def predict_report(resnet_checkpoint) -> dict:
    """One `tlcore predict` of one JPEG as the command: its first output line, modules and collector's record."""
    checkpoint, image = resnet_checkpoint
    done = subprocess.run(
        [sys.executable, "-c", AS_THE_COMMAND, "predict", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    return {"first": lines[0], "image": str(image), **json.loads(lines[-1])}


def test_predict_of_one_image_imports_no_torch_dynamo_and_no_matplotlib(predict_report):
    assert predict_report["first"].startswith(predict_report["image"])
    assert "ants" in predict_report["first"] and "bees" in predict_report["first"]
    modules = predict_report["modules"]
    assert "torchvision.models" in modules  # the backbone was built through torchvision
    for heavy in ("torch._dynamo", "torch._inductor", "matplotlib", "timm", "tensorboard", "sympy"):
        assert heavy not in modules, heavy


def test_predict_runs_no_full_garbage_collection_before_the_model_is_built(predict_report):
    """tlcore.heap: start-up (torch, torchvision, the model) is frozen, not scanned by full collections."""
    assert predict_report["frozen"] > 100_000  # torch's objects, frozen once the model was built
    assert all(frozen > 0 for frozen in predict_report["full"])  # no full collection before that
    assert predict_report["thresholds"] == [700, 10, 10]  # collected as usual afterwards


def test_torchvision_and_timm_import_without_dynamo_and_work_the_same():
    result = fresh("""
import json, sys
import torch
from tlcore import import_hooks
import_hooks.install()
import torchvision, timm
from torchvision import ops, tv_tensors
from torchvision.transforms import v2
imported = [name for name in sys.modules if name.startswith(("torch._dynamo", "torch._inductor"))]
features = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
pooled = ops.roi_align(features, torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]]), 2)  # stand-in is_compile_supported
still_deferred = "torch._dynamo" not in sys.modules
boxes = v2.Resize(4)(tv_tensors.BoundingBoxes([[0, 0, 4, 4]], format="XYXY", canvas_size=(8, 8)))
model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
import torch._dynamo
print(json.dumps({
    "imported": imported, "deferred": import_hooks.deferred_count(), "still_deferred": still_deferred,
    "pooled": pooled.flatten().tolist(), "boxes": type(boxes).__name__, "box": boxes.tolist(),
    "logits": list(model.eval()(torch.zeros(1, 3, 32, 32)).shape), "compiled": compiled(torch.ones(2)).tolist(),
    "real": type(torch._dynamo).__name__ == "module" and hasattr(torch._dynamo, "optimize"),
    "roi_align_loader": type(sys.modules["torchvision.ops.roi_align"].__loader__).__name__,
}))
""")
    reference = fresh("""
import json, torch
from torchvision import ops
features = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
print(json.dumps({"pooled": ops.roi_align(features, torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]]), 2).flatten().tolist()}))
""")
    assert result["imported"] == []
    assert result["deferred"] >= 3  # roi_align's import, tv_tensors' and naflexvit's @torch.compiler.disable
    assert result["still_deferred"]
    assert result["pooled"] == reference["pooled"]
    assert result["boxes"] == "BoundingBoxes" and result["box"] == [[0, 0, 2, 2]]  # tv_tensors.wrap, deferred disable
    assert result["logits"] == [1, 3]
    assert result["compiled"] == [3.0, 3.0]
    assert result["real"]
    assert result["roi_align_loader"] == "SourceFileLoader"  # the module keeps its own loader


def test_deferred_disable_still_keeps_dynamo_out_of_the_function():
    """A function marked with @torch.compiler.disable during a deferred import is not traced by torch.compile."""
    result = fresh("""
import json, sys
import torch
from tlcore import import_hooks
import_hooks.install()
from torchvision import tv_tensors
marked = tv_tensors.wrap
eager = type(marked(torch.zeros(3, 1, 1), like=tv_tensors.Image(torch.zeros(3, 1, 1)))).__name__
deferred = "torch._dynamo" not in sys.modules  # called outside any compilation: runs as it is, no TorchDynamo
def uses(x):
    y = x + 1
    return marked(y, like=tv_tensors.Image(torch.zeros(3, 1, 1))).as_subclass(torch.Tensor) * 2
import torch._dynamo
explained = torch._dynamo.explain(uses)(torch.zeros(3, 1, 1))
print(json.dumps({"deferred": deferred, "eager": eager, "breaks": explained.graph_break_count,
                  "value": torch.compile(uses, backend="eager")(torch.zeros(3, 1, 1)).flatten().tolist()}))
""")
    assert result["deferred"] and result["eager"] == "Image"
    assert result["breaks"] >= 1  # the disabled function is run outside the graph, as without the hook
    assert result["value"] == [2.0, 2.0, 2.0]


PACKAGE = {
    # module-level @torch.compiler.disable: deferred, the function still works (and then loads the real TorchDynamo)
    "marks.py": "import torch\n@torch.compiler.disable\ndef double(x):\n    return 2 * x\n",
    # names _dynamo in its source: imported as usual, with the real TorchDynamo
    "names.py": "import torch._dynamo.config\nLIMIT = torch._dynamo.config.cache_size_limit\n",
    # calls into a module outside the package that reads another TorchDynamo attribute: the real one loads
    "reads.py": "import helper_outside\nVALUE = helper_outside.read()\n",
}
HELPER = "import torch\ndef read():\n    import torch._dynamo\n    return torch._dynamo.is_compiling()\n"


@pytest.mark.parametrize("module", ["marks", "names", "reads"])
def test_a_module_that_needs_the_real_dynamo_gets_it(tmp_path, module):
    package = tmp_path / "hookedpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in PACKAGE.items():
        (package / name).write_text(text)
    (tmp_path / "helper_outside.py").write_text(HELPER)
    result = fresh(f"""
import importlib, json, sys
sys.path.insert(0, {str(tmp_path)!r})
import torch
from tlcore import import_hooks
import_hooks.PACKAGES = ("hookedpkg",)
import_hooks.install()
loaded = importlib.import_module("hookedpkg.{module}")
before = type(sys.modules.get("torch._dynamo")).__name__
out = {{"before": before}}
if {module!r} == "marks":
    out["double"] = loaded.double(torch.ones(2)).tolist()
if {module!r} == "names":
    out["limit"] = loaded.LIMIT
if {module!r} == "reads":
    out["value"] = loaded.VALUE
import torch._dynamo
out["real"] = hasattr(torch._dynamo, "optimize") and type(torch._dynamo).__name__ == "module"
print(json.dumps(out))
""")
    assert result["real"]
    if module == "marks":
        assert result == {"before": "NoneType", "double": [2.0, 2.0], "real": True}
    elif module == "names":
        assert result["before"] == "module" and isinstance(result["limit"], int)
    else:
        assert result == {"before": "module", "value": False, "real": True}


def test_a_library_import_of_tlcore_installs_no_hook():
    result = fresh("""
import json, sys
import tlcore, tlcore.cli
from tlcore import import_hooks
print(json.dumps({"hooked": any(f is import_hooks._FINDER for f in sys.meta_path)}))
""")
    assert result == {"hooked": False}
