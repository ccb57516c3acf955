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
    RequestTooLarge,
    TaskNotAvailableError,
    TextError,
)
from .engine import (
    TASKS,
    Entity,
    FlareModel,
    Label,
    MaskPrediction,
    TagResult,
    TaskSpec,
    WordLabel,
    get_task,
    load,
    similarity,
)
from .pipelines import pipeline

__version__ = "0.2.0"

__all__ = [
    "load",
    "pipeline",
    "similarity",
    "FlareModel",
    "TASKS",
    "TaskSpec",
    "get_task",
    "MaskPrediction",
    "Label",
    "TagResult",
    "WordLabel",
    "Entity",
    "FlareOnnxError",
    "BundleError",
    "InputError",
    "RequestTooLarge",
    "TaskNotAvailableError",
    "TextError",
    "InferenceError",
    "ExportError",
    "__version__",
]
