"""The package's exceptions: one base class, one subclass per kind of failure.

Each class says how every surface reports it: ``http_status`` for the HTTP service and the
serverless handler, ``exit_code`` for the command line. Surfaces read these attributes
rather than keeping their own tables.
"""

from __future__ import annotations

__all__ = [
    "FlareOnnxError",
    "BundleError",
    "InputError",
    "RequestTooLarge",
    "TextError",
    "TaskNotAvailableError",
    "InferenceError",
    "ExportError",
]


class FlareOnnxError(Exception):
    """Base class of every error flare-onnx raises on purpose."""

    http_status = 500
    exit_code = 1


class BundleError(FlareOnnxError):
    """A bundle directory is missing, malformed, altered or unsafe to load."""

    http_status = 500  # the server's bundle is broken: not the client's fault
    exit_code = 1


class InputError(FlareOnnxError, ValueError):
    """Input texts or options that the model cannot take, with the reason and the fix."""

    http_status = 422
    exit_code = 2


class RequestTooLarge(InputError):
    """A request whose work (characters, tokens, fill-mask candidates) is over the limits
    of the surface that took it; split it, or run it as a trusted batch job."""

    http_status = 413
    exit_code = 2


class TextError(InputError):
    """One text of a request that the model cannot take: ``index`` is its place in the
    request, ``reason`` what is wrong with it (``"is empty or only whitespace"``).

    Surfaces that keep going past a bad text (the file job, Ray Data) report it with the
    text's own place, through :meth:`~flare_onnx.engine.FlareModel.predict_each`.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"text {index} {reason}")
        self.index = index
        self.reason = reason

    def moved(self, index: int) -> TextError:
        """The same error for the same text at another place (a request of one text -> its
        place in the batch it came from)."""
        error = type(self)(index, self.reason)
        error.__cause__ = self.__cause__
        return error


class TaskNotAvailableError(FlareOnnxError):
    """The bundle was not exported for the task that was asked of it."""

    http_status = 404
    exit_code = 2


class InferenceError(FlareOnnxError):
    """The ONNX session failed or produced non-finite numbers."""

    http_status = 500
    exit_code = 1


class ExportError(FlareOnnxError):
    """Exporting a checkpoint to a bundle failed (raised by ``flare_onnx_export``)."""

    http_status = 500
    exit_code = 1
