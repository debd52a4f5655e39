"""tlcore: fine-tune pretrained image models on your own data.

The public Python API: everything a plugin or a script needs is importable from
``tlcore`` itself (docs/plugins.md, "The public API"); the submodules are the
implementation, and their paths may change. Old submodule imports keep working.

Only what needs no torch is imported with the package: the errors, the hook
specifications and ``hookimpl``, the plugin host and the registration API. Every
other public name (the contracts, training, evaluation, callbacks, images, ...)
is imported on first use, so ``import tlcore`` and ``tlcore --help`` do not load
torch. ``from tlcore import Backbone`` works as before: it imports the module then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlcore.errors import (
    ConfigError,
    DataError,
    NameConflictError,
    PluginError,
    TlcoreError,
    UnknownNameError,
    WeightsError,
)
from tlcore.hookspecs import (
    API_VERSION,
    BackboneFactory,
    CallbackFactory,
    DatasetFactory,
    FreezePolicyFactory,
    HeadFactory,
    hookimpl,
)
from tlcore.plugins import PluginHost, get_host, register, registered, unregister
from tlcore.registry import Register

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these come from _LAZY
    from tlcore.api import fit
    from tlcore.backbone import INTERPOLATIONS, Backbone, BackboneOptions, LayerGroup, Preprocessing
    from tlcore.calibration import coverage_curve, expected_calibration_error, fit_temperature
    from tlcore.callbacks.base import Callback
    from tlcore.config import RunConfig
    from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
    from tlcore.evaluation import EvalReport, evaluate_checkpoint
    from tlcore.export import export_checkpoint
    from tlcore.files import atomic_write_bytes
    from tlcore.freeze import FreezeOptions, FreezePolicy
    from tlcore.heads import HeadOptions
    from tlcore.images import decode_image, file_kind, open_image, to_rgb
    from tlcore.inference import Prediction, Predictor, load_checkpoint
    from tlcore.messages import first_line, short_repr
    from tlcore.multilabel import (
        MultilabelMetrics,
        average_precision,
        choose_thresholds,
        multi_hot,
        multilabel_metrics,
        multilabel_split,
        split_labels,
    )
    from tlcore.plugin_options import OptionRegister
    from tlcore.state import RunState, ValidationOutputs
    from tlcore.train import RunResult
    from tlcore.weights import PretrainedWeights, load_into_backbone

__version__ = "0.1.0"

# Imported on first use (name -> module), so `import tlcore` does not load the training stack.
_LAZY = {
    # the contracts plugins implement (torch): backbones, datasets, pretrained weights
    "Backbone": "tlcore.backbone",
    "BackboneOptions": "tlcore.backbone",
    "LayerGroup": "tlcore.backbone",
    "Preprocessing": "tlcore.backbone",
    "INTERPOLATIONS": "tlcore.backbone",
    "DatasetOptions": "tlcore.dataset",
    "DatasetSplits": "tlcore.dataset",
    "TensorImageDataset": "tlcore.dataset",
    "OptionRegister": "tlcore.plugin_options",  # what tlcore_register_options receives
    "PretrainedWeights": "tlcore.weights",
    "load_into_backbone": "tlcore.weights",
    "fit": "tlcore.api",
    # training: the configuration, what callbacks receive, freeze policies and heads
    "RunConfig": "tlcore.config",
    "RunState": "tlcore.state",
    "ValidationOutputs": "tlcore.state",  # RunState.last_validation: one validation pass's logits
    "RunResult": "tlcore.train",
    "Callback": "tlcore.callbacks.base",
    "FreezePolicy": "tlcore.freeze",
    "FreezeOptions": "tlcore.freeze",
    "HeadOptions": "tlcore.heads",
    # after training: checkpoints, predictions, evaluation, export
    "load_checkpoint": "tlcore.inference",
    "Predictor": "tlcore.inference",
    "Prediction": "tlcore.inference",
    "evaluate_checkpoint": "tlcore.evaluation",
    "EvalReport": "tlcore.evaluation",
    "export_checkpoint": "tlcore.export",
    # calibrated probabilities (temperature scaling) and rejection: docs/after-training.md
    "fit_temperature": "tlcore.calibration",
    "expected_calibration_error": "tlcore.calibration",
    "coverage_curve": "tlcore.calibration",
    # multi-label data and metrics (--task multilabel): docs/multilabel.md
    "split_labels": "tlcore.multilabel",  # one CSV cell's label names
    "multi_hot": "tlcore.multilabel",  # label index lists to float32 [N, C] rows
    "multilabel_split": "tlcore.multilabel",  # seeded iterative stratification
    "multilabel_metrics": "tlcore.multilabel",
    "MultilabelMetrics": "tlcore.multilabel",
    "average_precision": "tlcore.multilabel",
    "choose_thresholds": "tlcore.multilabel",
    # utilities for plugins: image decoding by tlcore's rules, safe file writing
    "decode_image": "tlcore.images",
    "open_image": "tlcore.images",
    "to_rgb": "tlcore.images",
    "file_kind": "tlcore.images",
    "atomic_write_bytes": "tlcore.files",
    "first_line": "tlcore.messages",  # an error's first line, for one-line messages
    "short_repr": "tlcore.messages",  # a value read from a file, as a one-line error shows it
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tlcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "API_VERSION",
    "Backbone",
    "BackboneFactory",
    "BackboneOptions",
    "Callback",
    "CallbackFactory",
    "ConfigError",
    "DataError",
    "DatasetFactory",
    "DatasetOptions",
    "DatasetSplits",
    "EvalReport",
    "FreezeOptions",
    "FreezePolicy",
    "FreezePolicyFactory",
    "HeadFactory",
    "HeadOptions",
    "INTERPOLATIONS",
    "LayerGroup",
    "MultilabelMetrics",
    "NameConflictError",
    "OptionRegister",
    "PluginError",
    "PluginHost",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "PretrainedWeights",
    "Register",
    "RunConfig",
    "RunResult",
    "RunState",
    "TensorImageDataset",
    "TlcoreError",
    "UnknownNameError",
    "ValidationOutputs",
    "WeightsError",
    "atomic_write_bytes",
    "average_precision",
    "choose_thresholds",
    "first_line",
    "short_repr",
    "coverage_curve",
    "decode_image",
    "evaluate_checkpoint",
    "expected_calibration_error",
    "export_checkpoint",
    "file_kind",
    "fit",
    "fit_temperature",
    "get_host",
    "hookimpl",
    "load_checkpoint",
    "load_into_backbone",
    "multi_hot",
    "multilabel_metrics",
    "multilabel_split",
    "open_image",
    "register",
    "registered",
    "split_labels",
    "to_rgb",
    "unregister",
]
