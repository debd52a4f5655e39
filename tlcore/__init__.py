"""tlcore: fine-tune pretrained image models on your own data.

The public Python API: register plugins at run time and use the contracts
that plugins implement.
"""

from tlcore.backbone import Backbone, BackboneOptions, LayerGroup, Preprocessing
from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore.errors import ConfigError, DataError, PluginError, TlcoreError, WeightsError
from tlcore.hookspecs import hookimpl
from tlcore.plugins import register, registered, unregister
from tlcore.weights import PretrainedWeights

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneOptions",
    "ConfigError",
    "DataError",
    "DatasetOptions",
    "DatasetSplits",
    "LayerGroup",
    "PluginError",
    "Preprocessing",
    "PretrainedWeights",
    "TensorImageDataset",
    "TlcoreError",
    "WeightsError",
    "hookimpl",
    "register",
    "registered",
    "unregister",
]
