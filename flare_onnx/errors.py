"""The package's exceptions: one base class, one subclass per kind of failure."""

from __future__ import annotations

__all__ = [
    "FlareOnnxError",
    "BundleError",
    "InputError",
    "TaskNotAvailableError",
    "InferenceError",
    "ExportError",
]


class FlareOnnxError(Exception):
    """Base class of every error flare-onnx raises on purpose."""


class BundleError(FlareOnnxError):
    """A bundle directory is missing, malformed, altered or unsafe to load."""


class InputError(FlareOnnxError, ValueError):
    """Input texts or options that the model cannot take, with the reason and the fix."""


class TaskNotAvailableError(FlareOnnxError):
    """The bundle was not exported for the task that was asked of it."""


class InferenceError(FlareOnnxError):
    """The ONNX session failed or produced non-finite numbers."""


class ExportError(FlareOnnxError):
    """Exporting a checkpoint to a bundle failed (raised by ``flare_onnx_export``)."""
