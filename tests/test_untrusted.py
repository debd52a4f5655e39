"""Untrusted files: nothing tlcore reads can run code, and a hostile or broken file is one clear error.

Where each kind of file is covered (this module adds what the others lack):

- CIFAR batches (pickles, read with ``tlcore_datasets.safepickle``):
  ``plugins/tlcore-datasets/tests/test_tlcore_datasets_cifar.py`` has
  ``test_malicious_pickle_is_refused_and_not_run`` (``open()`` and ``os.system``
  payloads in a batch, with proof that plain ``pickle.loads`` would run them),
  ``test_truncated_file``, ``test_garbage_file``, ``test_malformed_batch`` and
  ``test_malformed_meta``. Here: every pickle protocol, the meta file, object
  arrays, and the refusal reaching the user through ``tlcore run``.
- Weights ``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``):
  ``tests/test_weights.py::test_pickle_that_runs_code_is_refused`` (a raw
  protocol-2 pickle named ``.pt``). Here: ``torch.save``'s zip and legacy
  formats under every accepted suffix, through ``read_weights_file``,
  ``read_checkpoint``, ``tlcore.load_checkpoint`` and ``tlcore run --weights``.
- Checkpoints and training states are safetensors only: hostile headers,
  pickles renamed ``.safetensors`` and broken tlcore metadata, here.
- A static scan: no module of tlcore or of a plugin calls ``pickle.load``,
  ``pickle.loads``, a bare ``pickle.Unpickler``, ``numpy.load(allow_pickle=True)``
  or ``torch.load`` without ``weights_only=True``.

The last tests reproduce crashes this module found (damaged metadata in
checkpoints and training states); the core now turns each into a clean error.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from tlcore import cli
from tlcore.checkpoint import read_checkpoint
from tlcore.errors import DataError, TlcoreError, WeightsError
from tlcore.resume import STATE_FILE, load_train_state
from tlcore.testing import tiny_module, write_cifar10
from tlcore.weights import read_weights_file

REPO = Path(__file__).resolve().parents[1]


class RunsCommand:
    """Unpickling this runs ``touch MARKER`` in a shell."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class OpensFile:
    """Unpickling this creates MARKER with ``open(MARKER, "w")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_cli(args, capsys) -> tuple[int, str]:
    """``tlcore ARGS`` in-process: (exit code, stderr); any exception other than SystemExit fails the test."""
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    """Exit status 2 and exactly one line, ``tlcore: error: ...``, containing ``fragment``."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("tlcore: warning")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlcore: error: "), err
    assert fragment in lines[0], lines[0]


# -- CIFAR batches --------------------------------------------------------------


@pytest.fixture
def datasets_host(host):
    """The ``host`` fixture plus the datasets plugin."""
    tlcore_datasets = pytest.importorskip("tlcore_datasets")
    host.register(tlcore_datasets, "datasets")
    return host


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("file", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar_pickle_that_runs_code_is_refused_in_every_protocol_and_file(tmp_path, protocol, file):
    cifar = pytest.importorskip("tlcore_datasets.cifar")
    from tlcore.dataset import DatasetOptions

    root = write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    payload = {b"data": RunsCommand(marker), b"labels": [0], b"label_names": OpensFile(marker)}
    (root / "cifar-10-batches-py" / file).write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DataError, match=rf"refusing to load .*{file}: it asks to call "):
        cifar.load_cifar10("cifar10", DatasetOptions(data_dir=str(root), download=False))
    assert not marker.exists()


def test_cifar_object_array_holding_a_payload_is_refused(tmp_path):
    cifar = pytest.importorskip("tlcore_datasets.cifar")
    from tlcore.dataset import DatasetOptions

    root = write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    data = np.array([OpensFile(marker), 1], dtype=object)  # numpy pickles each element with the same pickler
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}))
    with pytest.raises(DataError, match="refusing to load .*data_batch_3: it asks to call .*open"):
        cifar.load_cifar10("cifar10", DatasetOptions(data_dir=str(root), download=False))
    assert not marker.exists()


def test_cifar_refusal_reaches_the_user_as_one_line_and_creates_no_run_folder(datasets_host, tmp_path, capsys):
    root = write_cifar10(tmp_path / "data")
    marker = tmp_path / "marker"
    (root / "cifar-10-batches-py" / "data_batch_5").write_bytes(pickle.dumps({b"data": RunsCommand(marker)}, protocol=2))
    out = tmp_path / "run"
    args = ["run", "--backbone", "tlcore.testing:tiny", "--weights", "none", "--dataset", "cifar10", "--data-dir", root]
    code, err = run_cli([*args, "--no-download", "--output", out], capsys)
    assert_one_line_error(code, err, "refusing to load")
    assert "data_batch_5" in err and any(f"{module}.system" in err for module in ("posix", "os", "nt")), err
    assert not marker.exists() and not out.exists()


# -- weights files ----------------------------------------------------------------


def malicious_torch_file(path: Path, marker: Path, zip_format: bool) -> Path:
    """A file torch.save wrote (zip or legacy format) whose state dict carries a code-running object."""
    state = {key: value for key, value in tiny_module().state_dict().items()}
    state["0.0.weight"] = RunsCommand(marker)
    torch.save({"state_dict": state, "extra": OpensFile(marker)}, path, _use_new_zipfile_serialization=zip_format)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_torch_file_that_runs_code_is_refused(tmp_path, suffix, zip_format):
    marker = tmp_path / "marker"
    path = malicious_torch_file(tmp_path / f"evil{suffix}", marker, zip_format)
    with pytest.raises(WeightsError, match="not a weights file that loads safely"):
        read_weights_file(path)
    with pytest.raises(WeightsError, match="not a weights file that loads safely"):
        read_checkpoint(path)
    assert not marker.exists()
    # proof that the file is hostile: a plain torch.load would run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_weights_through_the_api_and_the_command_line(host, tmp_path, capsys):
    import tlcore

    marker = tmp_path / "marker"
    path = malicious_torch_file(tmp_path / "evil.pth", marker, zip_format=True)
    with pytest.raises(WeightsError, match="loads safely"):
        tlcore.load_checkpoint(path, host=host)
    out = tmp_path / "run"
    args = ["run", "--backbone", "tlcore.testing:tiny", "--dataset", "tlcore.testing:shapes"]
    args += ["--weights", path, "--output", out]
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "is not a weights file that loads safely (weights_only=True)")
    assert not marker.exists() and not out.exists()


# -- safetensors: checkpoints and training states -----------------------------------


def raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file from a header written by hand (no checks)."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


TENSOR = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE_SAFETENSORS = {
    "empty": b"",
    "garbage": b"\x00\x01garbage",
    "header length 2**63": struct.pack("<Q", 2**63) + b"{}",
    "header length past the end": struct.pack("<Q", 1 << 20) + b"{}",
    "header not JSON": struct.pack("<Q", 5) + b"nope!",
    "header a JSON list": raw_safetensors([1, 2, 3]),  # type: ignore[arg-type]
    "offsets past the end": raw_safetensors({"w": {**TENSOR, "shape": [1000], "data_offsets": [0, 4000]}}, bytes(8)),
    "overlapping tensors": raw_safetensors({"a": TENSOR, "b": {**TENSOR, "data_offsets": [4, 12]}}, bytes(12)),
    "unknown dtype": raw_safetensors({"w": {**TENSOR, "dtype": "EVIL"}}, bytes(8)),
    "shape not matching bytes": raw_safetensors({"w": {**TENSOR, "shape": [3]}}, bytes(8)),
    "shape of 2**80 elements": raw_safetensors({"w": {**TENSOR, "shape": [2**40, 2**40]}}, bytes(8)),
    "metadata not strings": raw_safetensors({"__metadata__": {"tlcore": {"x": 1}}, "w": TENSOR}, bytes(8)),
    "truncated checkpoint": None,  # filled in by the test: a real checkpoint cut in half
}


def real_checkpoint_bytes() -> bytes:
    """The bytes of a checkpoint as a run writes it."""
    from tlcore.checkpoint import CheckpointInfo

    info = CheckpointInfo("tlcore.testing:tiny", ["a", "b"], "linear", {}, {}, 16, 1, {}, "none")
    return save({k: v.contiguous() for k, v in tiny_module().state_dict().items()}, metadata=info.to_metadata())


@pytest.mark.parametrize("name", list(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_are_a_clean_error_everywhere(host, tmp_path, capsys, name):
    content = HOSTILE_SAFETENSORS[name]
    if content is None:
        whole = real_checkpoint_bytes()
        content = whole[: len(whole) // 2]
    path = tmp_path / "best.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_weights_file(path)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_checkpoint(tmp_path)  # the run folder: its best.safetensors
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(TlcoreError):
        load_train_state(tmp_path)
    code, err = run_cli(["run", "--resume", tmp_path], capsys)
    assert_one_line_error(code, err, "not a readable safetensors file")


def test_pickle_renamed_safetensors_is_not_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "last.safetensors"
    path.write_bytes(pickle.dumps({"w": RunsCommand(marker)}))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_checkpoint(path)
    path.rename(tmp_path / STATE_FILE)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_train_state(tmp_path)
    assert not marker.exists()


def checkpoint_with_metadata(path: Path, tlcore_value: str) -> Path:
    """A safetensors file with real tensors and the given string as its ``tlcore`` metadata."""
    path.write_bytes(save({"head.weight": torch.zeros(2, 2)}, metadata={"tlcore": tlcore_value}))
    return path


def test_checkpoint_without_or_with_incomplete_tlcore_metadata(tmp_path):
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(save({"w": torch.zeros(2)}))
    with pytest.raises(WeightsError, match="not a tlcore checkpoint"):
        read_checkpoint(plain)
    record = json.dumps({"format": "tlcore-checkpoint", "format_version": 1, "backbone": "tlcore.testing:tiny"})
    with pytest.raises(WeightsError, match="damaged tlcore checkpoint: metadata lacks classes"):
        read_checkpoint(checkpoint_with_metadata(tmp_path / "partial.safetensors", record))
    newer = json.dumps({"format": "tlcore-checkpoint", "format_version": 99})
    with pytest.raises(WeightsError, match="newer tlcore"):
        read_checkpoint(checkpoint_with_metadata(tmp_path / "newer.safetensors", newer))


@pytest.mark.parametrize(
    "value",
    ["{not json", "[1]", "5", '{"format": "tlcore-checkpoint", "format_version": "1"}'],
    ids=["not JSON", "a list", "a number", "version a string"],
)
def test_checkpoint_with_malformed_tlcore_metadata_is_a_weights_error(tmp_path, value):
    with pytest.raises(WeightsError):
        read_checkpoint(checkpoint_with_metadata(tmp_path / "bad.safetensors", value))


@pytest.mark.parametrize("value", ["{not json", "[1]"], ids=["not JSON", "a list"])
def test_train_state_with_malformed_record_is_a_clean_error(tmp_path, value):
    (tmp_path / STATE_FILE).write_bytes(save({"w": torch.zeros(1)}, metadata={"tlcore_train_state": value}))
    with pytest.raises(TlcoreError):
        load_train_state(tmp_path)


def test_train_state_lacking_fields_is_a_clean_error_on_resume(host, tmp_path, capsys):
    from tlcore.config import build_config

    overrides = {"backbone": "tlcore.testing:tiny", "dataset": "tlcore.testing:shapes", "weights": "none"}
    config = build_config(overrides=overrides).to_dict()
    record = {"format": "tlcore-train-state", "format_version": 1, "config": config}  # no epoch, history, rng ...
    (tmp_path / STATE_FILE).write_bytes(save({"w": torch.zeros(1)}, metadata={"tlcore_train_state": json.dumps(record)}))
    try:
        cli.main(["run", "--resume", str(tmp_path)])
    except SystemExit as stop:
        assert stop.code == 2
    assert "tlcore: error: " in capsys.readouterr().err


# -- static scan of the sources ---------------------------------------------------------

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "torch", "numpy", "np"}


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Calls in ``source`` that can unpickle arbitrary code: ``file:line: what``.

    Flags ``pickle.load``/``loads``/``Unpickler`` (and the same names of dill,
    cloudpickle, joblib, whatever the import alias), ``torch.load`` without
    ``weights_only=True``, ``numpy.load`` with ``allow_pickle=True``, names
    imported from those modules, and subclasses of ``Unpickler`` that do not
    define ``find_class``.
    """
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in UNSAFE_MODULES:
                    aliases[alias.asname or root] = root
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            for alias in node.names:
                if alias.name in ("load", "loads", "Unpickler", "_Unpickler", "_loads", "_load"):
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name}")

    def keyword(call: ast.Call, name: str):
        for kw in call.keywords:
            if kw.arg == name:
                return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            if any(base.endswith("Unpickler") for base in bases):
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                if "find_class" not in methods:
                    found.append(f"{filename}:{node.lineno}: class {node.name} unpickles without find_class")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        module = aliases.get(owner.id) if isinstance(owner, ast.Name) else None
        attribute = node.func.attr
        if module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"):
            if attribute in ("load", "loads", "Unpickler", "_Unpickler", "_load", "_loads"):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node.func)}")
        elif module == "torch" and attribute == "load" and keyword(node, "weights_only") is not True:
            found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif module in ("numpy", "np") and attribute == "load" and keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
    return found


def shipped_sources() -> list[Path]:
    """Every module of tlcore and of the plugins in this repository (their tests excluded)."""
    files = sorted((REPO / "tlcore").rglob("*.py"))
    for plugin in sorted((REPO / "plugins").iterdir()):
        for path in sorted(plugin.rglob("*.py")):
            parts = path.relative_to(plugin).parts
            if parts[0] not in ("tests", "build") and not any(p.endswith(".egg-info") for p in parts):
                files.append(path)
    return files


def test_no_shipped_module_unpickles_without_restriction():
    files = shipped_sources()
    assert len(files) > 30 and any("tlcore_datasets" in str(p) for p in files)
    found = [line for path in files for line in unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.load(f)",
        "import pickle as p\np.loads(b)",
        "from pickle import loads",
        "import _pickle\n_pickle.Unpickler(f).load()",
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, map_location='cpu', weights_only=False)",
        "import torch as t\nt.load(p, weights_only=flag)",
        "import numpy as np\nnp.load(p, allow_pickle=True)",
        "import pickle\nclass Loose(pickle.Unpickler):\n    pass",
        "import dill\ndill.loads(b)",
    ],
)
def test_the_scan_finds_unsafe_loads(source):
    assert unsafe_loads(source), source


def test_the_scan_accepts_safe_loads():
    safe = (
        "import torch, numpy as np, pickle\n"
        "torch.load(p, map_location='cpu', weights_only=True)\n"
        "np.load(p)\n"
        "pickle.dumps(x)\n"
        "class R(pickle.Unpickler):\n    def find_class(self, module, name):\n        raise Exception\n"
    )
    assert unsafe_loads(safe) == []
