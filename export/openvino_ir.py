"""The OpenVINO INT8 IR of a bundle: NNCF post-training quantization of the FP32 graph,
calibrated on the export's Italian calibration text and held to the same fidelity guard as
the onnxruntime INT8 graph (measured against PyTorch FP32, or the export fails)."""

from __future__ import annotations

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
    core = ov.Core()
    model = core.read_model(str(fp32))
    inputs = {p.get_any_name() for p in model.inputs}
    # the export's verification batches (with their masks, so the MLM head is calibrated too)
    samples = [{k: v for k, v in b.items() if k in inputs} for b in batches]
    sentences = sum(len(b["input_ids"]) for b in batches)
    log(f"openvino: NNCF INT8 quantization, calibrated on {sentences} sentences in {len(samples)} batches")
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
    )
    xml_name, bin_name = IR_FILES["int8"]
    ov.save_model(quantized, str(directory / xml_name))
    compiled = core.compile_model(str(directory / xml_name), "CPU", {"INFERENCE_NUM_THREADS": 2})
    figures = compare(batches, reference, _outputs(compiled, batches))
    if not meets(figures, target):
        raise ExportError(
            f"the OpenVINO INT8 IR misses the fidelity target {target} (worst sentence {MIN_COSINE}) "
            f"on the calibration text ({score(figures):.5f}); lower --fidelity-target or export "
            f"without --openvino"
        )
    recipe = {
        "method": "NNCF post-training static INT8 (transformer model type, mixed preset, SmoothQuant)",
        "calibration_sentences": sentences,
        "nncf": getattr(nncf, "__version__", None),
        "openvino": ov.get_version(),
    }
    return recipe, figures
