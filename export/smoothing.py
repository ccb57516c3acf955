"""SmoothQuant factors and fixed scales for per-row INT8 activations (issue #36).

A LayerNorm's output — what the attention's Q/K/V and the FFN's first MatMul read — carries a
few channels 10-100x wider than the rest (LayerNorm's γ), so even one scale per token spends
most of its 8 bits on them. SmoothQuant (Xiao et al., 2023) moves that range into the weights:
``x W = (x / s) (s W)`` with ``s_j = max|x_j|^α / max|W_j|^(1-α)`` per input channel, measured
on the exporter's own calibration text (never on evaluation text). The INT8 pass multiplies the
weights' rows by ``s`` before rounding them. With the range flattened, and a LayerNorm output
normalized per token, one scale fixed at export covers every token: :func:`smoothing` also
returns the calibration text's peak of ``|x / s|``, and the INT8 pass quantizes the input with
one ``Mul`` by ``1 / (s σ)`` (``σ`` = that peak over 127) and no run-time reduction. Only
LayerNorm outputs are smoothed: on all-MiniLM-L6-v2 and multilingual-e5-small they carry all of
the gain (benchmarks/int8_probe.py, docs/int8.md), and the attention output and the FFN's second
MatMul gain nothing from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .verify import calibration_statistics

__all__ = ["SMOOTH_ALPHA", "layernorm_groups", "smoothing", "smoothing_factors", "smoothing_of"]

#: migration strength: with the smoothed input's scale fixed at export, 0.8 was the best of 0.5, 0.65, 0.8, 0.9 and 1.0
#: on both models (docs/int8.md); with run-time per-row scales 0.5 was
SMOOTH_ALPHA = 0.8
_CLIP = (1e-2, 1e2)  # factors outside are clipped: a dead channel must not blow a weight row up


def layernorm_groups(model: Any) -> dict[str, list[Any]]:
    """MatMuls with a constant 2-D weight that read a LayerNormalization's output, by that output."""
    inits = {t.name: t for t in model.graph.initializer}
    norms = {o for n in model.graph.node if n.op_type == "LayerNormalization" for o in n.output[:1]}
    groups: dict[str, list[Any]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[0] in norms and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            groups.setdefault(n.input[0], []).append(n)
    return groups


def smoothing_factors(
    fp32: Path, batches: list[dict[str, np.ndarray]], alpha: float = SMOOTH_ALPHA
) -> dict[str, np.ndarray]:
    """``{LayerNorm output: s}`` for every LayerNorm output a weight MatMul reads, from the
    activations of ``batches`` (pad positions left out) run through the FP32 graph."""
    return smoothing(fp32, batches, alpha)[0]


def smoothing(
    fp32: Path, batches: list[dict[str, np.ndarray]], alpha: float = SMOOTH_ALPHA
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`smoothing_factors` and, by the same LayerNorm output, the largest ``|x / s|`` the
    calibration text reached: the range a scale fixed at export must cover."""
    model = require("onnx").load(str(fp32))
    groups = layernorm_groups(model)
    if not groups:
        return {}, {}
    return smoothing_of(model, groups, calibration_statistics(model, batches, peaks=groups)[0], alpha)


def smoothing_of(
    model: Any, groups: dict[str, list[Any]], seen: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`smoothing` from the calibration text's per-channel peaks ``seen`` of each LayerNorm
    output in ``groups`` (:func:`layernorm_groups` of ``model``)."""
    to_array = require("onnx").numpy_helper.to_array
    inits = {t.name: t for t in model.graph.initializer}
    factors, peaks = {}, {}
    for x, members in groups.items():
        w = np.max([np.abs(to_array(inits[m.input[1]])).max(axis=1) for m in members], axis=0)
        s = np.clip(seen[x], 1e-5, None) ** alpha / np.clip(w, 1e-5, None) ** (1 - alpha)
        factors[x] = np.clip(s, *_CLIP).astype(np.float32)
        peaks[x] = float((seen[x] / factors[x]).max())
    return factors, peaks
