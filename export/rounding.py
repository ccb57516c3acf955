"""GPTQ rounding of the INT8 weights against the calibration text's activations (issue #36).

Round-to-nearest picks each weight's integer on its own. GPTQ (Frantar et al., 2023) rounds the
input rows of ``x @ W`` one at a time and pushes each row's rounding error onto the rows not yet
rounded, through the inverse of ``H = XᵀX`` (the calibration activations' second moments), so
what is minimized is the layer's *output* error on real text, not the weights' own. The grid is
round-to-nearest's — the same per-column scales and integer range — so the graph, its kernels
and its speed are unchanged: the gain costs nothing at run time, only seconds at export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .verify import calibration_statistics

__all__ = ["DAMP", "gptq", "input_hessians", "matmul_inputs"]

#: diagonal damping, as a fraction of H's mean diagonal (GPTQ's default): a channel the
#: calibration never excites, or more channels than tokens, leaves H singular without it
DAMP = 0.01
_BLOCK = 128  # rows rounded between two updates of the rest (the result is the same; the updates are GEMMs)


def gptq(weight: np.ndarray, hessian: np.ndarray, levels: int, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` ([K, N], for ``x @ weight``) rounded to ``-levels…levels`` with one scale per
    output column (round-to-nearest's scales), row by row in order of ``diag(H)`` (act-order),
    each row's error carried to the rows left through ``H⁻¹``'s Cholesky factor. A channel the
    calibration never excites carries no error and takes none: it is rounded to nearest (GPTQ's
    reference zeroes it, which text with that channel alive would pay for). Returns ``(q, scale)``:
    INT8 integers and float32 scales."""
    k = weight.shape[0]
    scale = np.abs(weight).max(axis=0).astype(np.float64) / levels
    scale[scale == 0] = 1.0
    h = np.asarray(hessian, np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    order = np.argsort(-np.diag(h), kind="stable")
    w = weight.astype(np.float64)[order]
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(order, order)])).T  # upper: H⁻¹ = UᵀU
    q = np.empty_like(w)
    for start in range(0, k, _BLOCK):  # GPTQ's lazy batches: rows within a block, then one GEMM after it
        end = min(start + _BLOCK, k)
        errors = np.empty((end - start, w.shape[1]))
        for i in range(start, end):
            q[i] = np.clip(np.rint(w[i] / scale), -levels, levels)
            errors[i - start] = (w[i] - q[i] * scale) / u[i, i]
            w[i + 1 : end] -= np.outer(u[i, i + 1 : end], errors[i - start])
        w[end:] -= u[start:end, end:].T @ errors
    out = np.empty_like(q)
    out[order] = q
    return out.astype(np.int8), scale.astype(np.float32)


def matmul_inputs(model: Any) -> list[str]:
    """The inputs that MatMuls with a constant 2-D weight read in ``model`` (an ONNX ModelProto)."""
    inits = {t.name: t for t in model.graph.initializer}
    return sorted(
        {
            n.input[0]
            for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
        }
    )


def input_hessians(fp32: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{MatMul input: XᵀX}`` (float64, pad positions left out) for every input a MatMul with a
    constant 2-D weight reads, over ``batches`` run through the FP32 graph."""
    model = require("onnx").load(str(fp32))
    return calibration_statistics(model, batches, moments=matmul_inputs(model))[1]
