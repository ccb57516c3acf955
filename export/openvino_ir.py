"""The OpenVINO INT8 IR of a bundle: NNCF post-training quantization of the FP32 graph,
calibrated on the export's Italian calibration text and held to the same fidelity guard as
the onnxruntime INT8 graph (measured against PyTorch FP32, or the export fails)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flare_onnx.errors import ExportError

from .guard import MIN_COSINE, meets, score
from .verify import compare

__all__ = ["write_openvino_int8", "require_openvino", "IR_FILES"]

IR_FILES = {"int8": ("model.int8.xml", "model.int8.bin")}


def require_openvino() -> tuple[Any, Any]:
    """OpenVINO and NNCF, or an ExportError that says how to install them."""
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise ExportError(
            f'--openvino needs OpenVINO and NNCF at export time: pip install ".[openvino-export]" ({exc})'
        ) from exc
    return ov, nncf


def _outputs(compiled: Any, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    names = [p.get_any_name() for p in compiled.outputs]
    inputs = {p.get_any_name() for p in compiled.inputs}
    request = compiled.create_infer_request()
    out = []
    for b in batches:
        result = request.infer({k: v for k, v in b.items() if k in inputs})
        by_name = {port.get_any_name(): np.array(value) for port, value in result.items()}
        out.append({n: by_name[n] for n in names})
    return out


#: NNCF recipes, tried in order until the IR meets the fidelity target: NNCF's transformer
#: default, then the same with each layer's FFN output projection (the GELU outputs' long tail)
#: left unquantized. Measured on all-MiniLM-L6-v2, 482 held-out ISDT sentences: cosine to FP32
#: 0.99356 -> 0.99662, nearest-neighbour agreement 0.80 -> 0.86, no slower.
RECIPES = ("transformer default", "FFN output projections kept in floating point")
_FFN_OUT = re.compile(r"layer\.\d+/output/dense/MatMul")


def _quantize(model: Any, nncf: Any, samples: list[dict[str, np.ndarray]], recipe: str) -> Any:
    ignored = None
    if recipe == RECIPES[1]:
        names = [
            op.get_friendly_name()
            for op in model.get_ops()
            if op.get_type_name() == "MatMul" and _FFN_OUT.search(op.get_friendly_name())
        ]
        ignored = nncf.IgnoredScope(names=names) if names else None
    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
        ignored_scope=ignored,
    )


def write_openvino_int8(
    fp32: Path,
    directory: Path,
    batches: list[dict[str, np.ndarray]],
    reference: list[dict[str, Any]],
    *,
    target: float,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``model.int8.xml``/``.bin`` into ``directory``; return (recipe, figures)."""
    ov, nncf = require_openvino()
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node left in floating point
    core = ov.Core()
    inputs = {p.get_any_name() for p in core.read_model(str(fp32)).inputs}
    # the export's verification batches (with their masks, so the MLM head is calibrated too)
    samples = [{k: v for k, v in b.items() if k in inputs} for b in batches]
    sentences = sum(len(b["input_ids"]) for b in batches)
    xml_name, _ = IR_FILES["int8"]
    for recipe in RECIPES:
        log(f"openvino: NNCF INT8 ({recipe}), calibrated on {sentences} sentences in {len(samples)} batches")
        ov.save_model(_quantize(core.read_model(str(fp32)), nncf, samples, recipe), str(directory / xml_name))
        compiled = core.compile_model(str(directory / xml_name), "CPU", {"INFERENCE_NUM_THREADS": 2})
        figures = compare(batches, reference, _outputs(compiled, batches))
        if meets(figures, target):
            break
        log(f"openvino: {recipe}: cosine {score(figures):.5f} misses the target {target}")
    else:
        raise ExportError(
            f"the OpenVINO INT8 IR misses the fidelity target {target} (worst sentence {MIN_COSINE}) "
            f"on the calibration text ({score(figures):.5f}) with every recipe; lower --fidelity-target "
            f"or export without --openvino"
        )
    return {
        "method": f"NNCF post-training static INT8 (transformer model type, mixed preset, SmoothQuant; {recipe})",
        "calibration_sentences": sentences,
        "nncf": getattr(nncf, "__version__", None),
        "openvino": ov.get_version(),
    }, figures
