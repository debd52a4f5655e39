"""tlcore: fine-tune pretrained image models on your own data.

The public Python API: register plugins at run time and use the contracts
that plugins implement.
"""

from tlcore.backbone import Backbone, BackboneOptions, LayerGroup, Preprocessing
from tlcore.dataset import DatasetOptions, DatasetSplits, TensorImageDataset
from tlcore.errors import TlcoreError
from tlcore.hookspecs import hookimpl
from tlcore.plugins import register, registered, unregister
from tlcore.weights import PretrainedWeights

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneOptions",
    "DatasetOptions",
    "DatasetSplits",
    "LayerGroup",
    "Preprocessing",
    "PretrainedWeights",
    "TensorImageDataset",
    "TlcoreError",
    "hookimpl",
    "register",
    "registered",
    "unregister",
]
