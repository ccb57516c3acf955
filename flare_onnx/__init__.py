"""flare-onnx: run osiria/flare-it (and other BERT/XLM-R encoders) as INT8 ONNX, torch-free.

The public API is what this module re-exports; everything else is internal.

    >>> import flare_onnx
    >>> model = flare_onnx.load("flare-it-onnx")
    >>> model.fill_mask(["Roma è la <mask> d'Italia."])
"""

from .errors import (
    BundleError,
    ExportError,
    FlareOnnxError,
    InferenceError,
    InputError,
    TaskNotAvailableError,
)
from .model import FlareModel, Label, MaskPrediction, TagResult, load
from .postprocess import Entity, WordLabel

__version__ = "0.1.0"

__all__ = [
    "load",
    "FlareModel",
    "MaskPrediction",
    "Label",
    "TagResult",
    "WordLabel",
    "Entity",
    "FlareOnnxError",
    "BundleError",
    "InputError",
    "TaskNotAvailableError",
    "InferenceError",
    "ExportError",
    "__version__",
]
