"""The INT8 graph stored as onnxruntime would optimize it, so a session starts without doing it.

Creating an onnxruntime session runs its graph optimizers (constant folding, shared-constant and
common-subexpression elimination, GELU and reshape fusions, …) every time: ~45 of the ~105 ms
``InferenceSession`` takes on the reference bundle's INT8 graph (AVX2 EPYC, medians of 7). The
exporter runs them once instead, at the ``extended`` level (no layout changes tied to the
CPU it runs on), stores the result, and marks the graph ``optimized``; the runtime then creates
its session at the ``basic`` level, which finds nearly nothing left to do (~60 ms).

One thing is undone: a table the graph reads transposed (the tied MLM projection reads the word
table that way) is folded into a second, transposed copy, which would make the file a third
larger; the ``Transpose`` stays in the stored graph and the ``basic`` level folds it when the
session is created, as before. The optimized graph must give the same outputs as the plain one
on the calibration batches (to 1e-5), or the plain graph is kept.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .verify import onnx_outputs

__all__ = ["optimize_for_onnxruntime", "OPTIMIZED_LEVEL", "TOLERANCE"]

OPTIMIZED_LEVEL = "extended"
TOLERANCE = 1e-5


def _session(ort: Any, model: bytes | str, level: Any, save: str | None = None) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if save:
        options.optimized_model_filepath = save
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _unfold_transposed_tables(before: Any, after: Any) -> None:
    """Put back each ``Transpose`` of a stored table that the optimizer folded into a copy."""
    stored = {t.name for t in before.graph.initializer}
    transposes = {n.output[0]: n for n in before.graph.node if n.op_type == "Transpose" and n.input[0] in stored}
    kept = {t.name for t in after.graph.initializer}
    for name, node in transposes.items():
        if name in kept and node.input[0] in kept:
            index = next(i for i, t in enumerate(after.graph.initializer) if t.name == name)
            del after.graph.initializer[index]
            after.graph.node.insert(0, node)  # its only input is a stored table: first is in order


def optimize_for_onnxruntime(
    path: Path, batches: list[dict[str, np.ndarray]], log: Callable[[str], None] = print
) -> dict[str, str] | None:
    """Rewrite the graph at ``path`` as onnxruntime's optimizers leave it; return the manifest's
    ``optimized`` record, or ``None`` when the graph was kept as it was (outputs differed)."""
    ort, onnx = require("onnxruntime"), require("onnx")
    levels = ort.GraphOptimizationLevel
    with tempfile.TemporaryDirectory() as tmp:
        saved = str(Path(tmp) / "optimized.onnx")
        _session(ort, str(path), levels.ORT_ENABLE_EXTENDED, save=saved)
        before = onnx.load(str(path))
        after = onnx.load(saved)
    _unfold_transposed_tables(before, after)
    data = after.SerializeToString()
    plain = onnx_outputs(_session(ort, str(path), levels.ORT_ENABLE_ALL), batches)  # not yet rewritten
    optimized = onnx_outputs(_session(ort, data, levels.ORT_ENABLE_BASIC), batches)
    worst = 0.0
    for ours, theirs in zip(plain, optimized):
        for name, value in ours.items():
            diff = float(np.abs(value - theirs[name]).max(initial=0.0))
            worst = max(worst, diff if np.isfinite(diff) else np.inf)
    if worst > TOLERANCE:
        log(f"onnxruntime's optimized graph differs by {worst:.3g} (more than {TOLERANCE}); the plain graph is kept")
        return None
    path.write_bytes(data)
    return {"by": f"onnxruntime {ort.__version__}", "level": OPTIMIZED_LEVEL}
