"""tlcore: fine-tune pretrained image models on your own data.

The public Python API: register plugins at run time and use the contracts
that plugins implement.
"""

from tlcore.api import fit
from tlcore.backbone import Backbone, BackboneOptions, LayerGroup, Preprocessing
from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError, DataError, PluginError, TlcoreError, WeightsError
from tlcore.hookspecs import hookimpl
from tlcore.plugins import register, registered, unregister
from tlcore.weights import PretrainedWeights

__version__ = "0.1.0"

# After-training API, imported on first use so `import tlcore` stays light.
_LAZY = {
    "load_checkpoint": "tlcore.inference",
    "Predictor": "tlcore.inference",
    "Prediction": "tlcore.inference",
    "evaluate_checkpoint": "tlcore.evaluation",
    "export_checkpoint": "tlcore.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlcore' has no attribute {name!r}")


__all__ = [
    "Backbone",
    "BackboneOptions",
    "ConfigError",
    "DataError",
    "DatasetOptions",
    "DatasetSplits",
    "LayerGroup",
    "PluginError",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "PretrainedWeights",
    "TensorImageDataset",
    "TlcoreError",
    "WeightsError",
    "evaluate_checkpoint",
    "export_checkpoint",
    "fit",
    "hookimpl",
    "load_checkpoint",
    "register",
    "registered",
    "unregister",
]
