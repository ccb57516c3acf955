"""Lazy imports of the export extra, turned into an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install ".[export]" from a clone of flare-onnx'


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ImportError that says how to install the export extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"exporting needs {module.split('.')[0]!r}, which is not installed: {INSTALL_HINT} "
            f"(on CPU-only machines install torch's CPU build first)"
        ) from exc
