"""INT8 quantization of an exported FP32 graph."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from ._deps import require

__all__ = ["quantize_int8", "cpu_has_vnni"]


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (fast u8×s8 dot products)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().lower() in ("arm64", "aarch64")
    return " avx512_vnni" in flags or " avx_vnni" in flags


def quantize_int8(fp32: Path, out: Path, *, exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8: per-channel signed weights, activations quantized at run time.

    Without VNNI, AVX2's u8×s8 multiply-add saturates at 16 bits; ``reduce_range`` keeps
    weights to 7 bits so sums cannot overflow. Returns the recipe for the manifest.
    """
    q = require("onnxruntime.quantization")
    vnni = cpu_has_vnni()
    recipe = {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": True,
        "reduce_range": not vnni,
        "op_types": ["MatMul"],
        "fp32_nodes": sorted(exclude or []),
        "built_for": "vnni" if vnni else "avx2",
    }
    q.quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=recipe["op_types"],
        per_channel=True,
        reduce_range=recipe["reduce_range"],
        weight_type=q.QuantType.QInt8,
        nodes_to_exclude=recipe["fp32_nodes"],
    )
    return recipe
