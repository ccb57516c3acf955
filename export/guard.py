"""The export's accuracy guard: quantize, measure against PyTorch, and keep the most
sensitive groups of nodes in FP32 until the fidelity target is met (or fail loudly)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require
from .quantize import quantizable_nodes, quantize_int8
from .verify import compare, onnx_outputs

__all__ = ["quantize_guarded", "DEFAULT_TARGET", "MIN_COSINE", "LABEL_AGREEMENT"]

DEFAULT_TARGET = 0.995  # mean cosine of mean-pooled hidden states with PyTorch FP32
MIN_COSINE = 0.98  # worst sentence
LABEL_AGREEMENT = 0.99  # classification graphs (no hidden states): argmax agreement

_GROUP = re.compile(r"layer\.(\d+)/(attention/self|attention/output|intermediate|output)")


def _groups(nodes: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in nodes:
        m = _GROUP.search(name)
        key = f"layer.{m.group(1)}/{m.group(2)}" if m else ("embeddings" if "embeddings" in name else name)
        out.setdefault(key, []).append(name)
    return out


def score(figures: dict[str, Any]) -> float:
    return figures["embedding_cosine_mean"] if "embedding_cosine_mean" in figures else figures.get("label_agreement", 1.0)


def meets(figures: dict[str, Any], target: float) -> bool:
    if "embedding_cosine_mean" in figures:
        return figures["embedding_cosine_mean"] >= target and figures["embedding_cosine_min"] >= MIN_COSINE
    return figures.get("label_agreement", 1.0) >= LABEL_AGREEMENT


def quantize_guarded(
    fp32: Path,
    out: Path,
    batches: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    *,
    target: float = DEFAULT_TARGET,
    target_cpu: str = "auto",
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the INT8 graph; return (recipe, figures against PyTorch)."""
    ort = require("onnxruntime")
    onnx = require("onnx")

    def attempt(keep: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        recipe = quantize_int8(fp32, out, target=target_cpu, keep_fp32=keep)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return recipe, compare(batches, reference, onnx_outputs(session, batches))

    recipe, figures = attempt([])
    if meets(figures, target):
        recipe["fidelity_target"] = target
        return recipe, figures
    groups = _groups(quantizable_nodes(onnx.load(str(fp32), load_external_data=False)))
    log(f"int8 misses the fidelity target ({score(figures):.5f} < {target}); ranking {len(groups)} groups of nodes")
    gains = {}
    for name, nodes in groups.items():  # leave one group in FP32 at a time
        gains[name] = score(attempt(nodes)[1])
    ranked = sorted(groups, key=lambda g: -gains[g])
    keep: list[str] = []
    for count, name in enumerate(ranked, 1):
        keep += groups[name]
        recipe, figures = attempt(keep)
        log(f"  {count} group(s) in FP32 (last: {name}): {score(figures):.5f}")
        if meets(figures, target):
            recipe["fidelity_target"] = target
            recipe["fp32_groups"] = ranked[:count]
            return recipe, figures
    raise ExportError(
        f"the INT8 graph cannot reach the fidelity target {target} on the calibration text even "
        f"with every quantized node in FP32 ({score(figures):.5f}); lower --fidelity-target or "
        f"export --precision fp32"
    )
