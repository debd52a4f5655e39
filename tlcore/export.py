"""Exporting a checkpoint for use without tlcore: TorchScript, torch.export (.pt2) and ONNX.

Every artifact takes *normalised* float input ``(N, 3, S, S)`` (NCHW, any
batch size) and returns *calibrated* logits ``(N, classes)``: the model's
logits divided by the checkpoint's temperature (tlcore.calibration; 1.0 when
it has none) inside the graph, so their softmax is the calibrated probability
`tlcore predict` reports. How to get there from an image
(resize, centre-crop, scale, normalise) and the class names are written beside
it as ``<artifact>.json`` and embedded in it (an extra file ``tlcore.json`` in
TorchScript and .pt2 archives, metadata in ONNX). The run's model card
(README.md, tlcore.model_card), when the checkpoint's folder has one, is copied
beside it as ``<artifact>.md``.

A multilabel checkpoint's artifact returns its raw logits (no temperature);
``sigmoid`` of each gives that class's probability, and the metadata carries
``task`` "multilabel" and ``thresholds`` (one per class, ``classes`` order): a
class is predicted when its probability is at or above its threshold, as
`tlcore predict` decides. The parity check compares these logits, which bounds
the probabilities' difference too (sigmoid's slope is at most 1/4).

Each export is loaded back and compared with the checkpoint's calibrated model
(:attr:`tlcore.inference.Predictor.calibrated`, what `predict` uses) on sample
inputs of another batch size before the file is moved into place, so a file
that exists was checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlcore.errors import ConfigError, PluginError
from tlcore.files import atomic_file, atomic_write_json
from tlcore.inference import Predictor, load_checkpoint
from tlcore.messages import first_line
from tlcore.model_card import copy_card_for_export
from tlcore.plugins import PluginHost

FORMATS = {"torchscript": ".torchscript.pt", "pt2": ".pt2", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # exporter (onnx + onnxscript) and the check (onnxruntime)
ATOL = 1e-4
RTOL = 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3  # checked on another batch size than traced: the batch dimension must stay free
METADATA_NAME = "tlcore.json"


@dataclass
class ExportResult:
    """Where an export went and how closely it matches the checkpoint."""

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float
    checked_shape: tuple[int, ...]
    card: Path | None = None  # the run's model card copied beside the file (<file>.md), None when the run has none


def export_checkpoint(
    checkpoint: str | Path, fmt: str, output: str | Path | None = None, host: PluginHost | None = None
) -> ExportResult:
    """Export a checkpoint to ``fmt`` (torchscript, pt2 or onnx), check it numerically, write it and its sidecar JSON.

    ``output`` defaults to the checkpoint's name with the format's suffix
    (``best.pt2``); an existing file there is replaced.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not accepted; accepted: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    if output:  # a bad --output fails before the checkpoint is read
        check_export_target(Path(output).expanduser())
    predictor = load_checkpoint(checkpoint, device="cpu", host=host)
    target = Path(output).expanduser() if output else predictor.path.with_name(predictor.path.stem + FORMATS[fmt])
    if target.resolve() == predictor.path.resolve():
        raise ConfigError(f"export output {target} is the checkpoint itself; choose another --output")
    check_export_target(target)
    metadata = export_metadata(predictor, fmt, target)
    exporter, loader = EXPORTERS[fmt]
    model = predictor.calibrated.eval()  # the graph divides by the temperature: the parity check covers it
    generator = torch.Generator().manual_seed(0)
    size = predictor.image_size
    sample = torch.randn(TRACE_BATCH, 3, size, size, generator=generator)
    check = torch.randn(CHECK_BATCH, 3, size, size, generator=generator)

    # the temporary name keeps the suffix: torch.export.load insists on .pt2; it replaces target only once verified
    with atomic_file(target, suffix=target.suffix) as tmp:
        try:
            exporter(model, sample, tmp, metadata)
            run = loader(tmp)
            with torch.no_grad():
                expected = model(check).float()
                actual = torch.as_tensor(run(check)).float()
        except (ConfigError, PluginError):
            raise
        except Exception as error:  # tracing/export failures come in many types; all mean "this model does not export"
            first = first_line(error, default="")
            raise PluginError(
                f"backbone {predictor.info.backbone} could not be exported to {fmt}: {type(error).__name__}: {first}"
            ) from error
        difference = verify_outputs(expected, actual, fmt, predictor.info.backbone)
        metadata["verified"] = {"max_abs_diff": difference, "atol": ATOL, "rtol": RTOL, "input_shape": list(check.shape)}
    sidecar = target.with_name(target.name + ".json")
    atomic_write_json(sidecar, metadata)
    card = copy_card_for_export(predictor.path, target, fmt)  # the run's README.md, as <file>.md
    return ExportResult(target, sidecar, fmt, difference, tuple(check.shape), card)


def check_export_target(target: Path) -> None:
    """ConfigError unless ``target`` can become the exported file.

    Refused: an existing folder, a file that is read-only (the user protected
    it; it is not replaced), a parent folder that does not exist or where no
    file can be created (read-only folder or file system).
    """
    if target.is_dir():
        raise ConfigError(f"export --output {target} is an existing folder; pass a file name, e.g. {target / 'model.pt2'}")
    if target.exists() and not os.access(target, os.W_OK) or target.is_file() and not target.stat().st_mode & 0o222:
        raise ConfigError(f"export --output {target} is a read-only file; it is not replaced: choose another --output")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: folder {target.parent} does not exist")
    try:  # the real test of a writable folder (access() says yes to root on a read-only file system)
        fd, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"export --output {target}: folder {target.parent} cannot be written ({error.strerror})") from None


def verify_outputs(expected: torch.Tensor, actual: torch.Tensor, fmt: str, backbone: str) -> float:
    """The largest absolute difference; PluginError when the export does not reproduce the checkpoint's logits."""
    if actual.shape != expected.shape:
        raise PluginError(
            f"the {fmt} export of {backbone} gives shape {tuple(actual.shape)}, the checkpoint {tuple(expected.shape)}"
        )
    difference = float((actual - expected).abs().max())
    if not torch.allclose(actual, expected, atol=ATOL, rtol=RTOL):
        raise PluginError(
            f"the {fmt} export of {backbone} does not reproduce the checkpoint's logits "
            f"(max |difference| {difference:.2e} > atol {ATOL:g}); it was not written"
        )
    return difference


def export_metadata(predictor: Predictor, fmt: str, target: Path) -> dict[str, Any]:
    """What a user of the artifact needs: input layout, preprocessing steps, class names, provenance."""
    pre = predictor.preprocessing
    size = predictor.image_size
    info = predictor.info
    if predictor.multilabel:
        meaning = (
            "logits: sigmoid of each gives that class's probability; the image has every class whose probability "
            "is at or above its entry in thresholds"
        )
    else:
        meaning = "calibrated logits: the model's logits divided by temperature; softmax gives the probabilities"
    return {
        "format": "tlcore-export",
        "format_version": 1,
        "export_format": fmt,
        "file": target.name,
        "classes": list(predictor.classes),
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW"},
        "output": {
            "name": "logits",
            "shape": ["batch", len(predictor.classes)],
            "meaning": meaning,
        },
        "task": predictor.task,
        # multilabel: the probability at or above which each class is predicted (classes order); null for multiclass
        "thresholds": None if predictor.thresholds is None else list(predictor.thresholds),
        "temperature": predictor.temperature,
        "preprocessing": {
            # the same steps as training validation (tlcore.data.build_transform with train=False)
            "steps": "RGB; resize shorter side to resize_to; centre-crop image_size; scale to [0, 1]; (x - mean) / std",
            "resize_to": pre.resize_for(size),
            "image_size": size,
            "interpolation": pre.interpolation,
            "antialias": True,
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "backbone": info.backbone,
        "head": info.head,
        "epoch": info.epoch,
        "metrics": info.metrics,
        "checkpoint": str(predictor.path),
        "torch": torch.__version__,
    }


def require_onnx() -> None:
    """ConfigError saying what to install when the optional ONNX packages are missing."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        state = "which are not installed" if len(missing) == len(ONNX_PACKAGES) else f"and {', '.join(missing)} is missing"
        raise ConfigError(
            f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)}, {state}; "
            f"install them with: pip install {' '.join(ONNX_PACKAGES)}"
        )


# -- one exporter and one loader per format ----------------------------------


def _export_torchscript(model: torch.nn.Module, sample: torch.Tensor, path: Path, metadata: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates jit; the numeric check is what we rely on
        traced = torch.jit.trace(model, sample)
        torch.jit.save(traced, str(path), _extra_files={METADATA_NAME: json.dumps(metadata)})


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _export_pt2(model: torch.nn.Module, sample: torch.Tensor, path: Path, metadata: dict) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path), extra_files={METADATA_NAME: json.dumps(metadata)})


def _load_pt2(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.export.load(str(path)).module()


def _export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, metadata: dict) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about opsets and decompositions
        program = torch.onnx.export(
            model,
            (sample,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_NAME, json.dumps(metadata)
    onnx.save_model(proto, str(path))


def _load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


EXPORTERS = {
    "torchscript": (_export_torchscript, _load_torchscript),
    "pt2": (_export_pt2, _load_pt2),
    "onnx": (_export_onnx, _load_onnx),
}
