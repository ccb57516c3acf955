"""The export's accuracy guard: quantize, measure against PyTorch, and keep the most
sensitive groups of nodes in FP32 until the fidelity target is met (or fail loudly)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require
from .quantize import quantizable_nodes, quantize_int8
from .rounding import matmul_inputs
from .smoothing import SMOOTH_ALPHA, layernorm_groups, smoothing_of
from .verify import calibration_statistics, compare, onnx_outputs

__all__ = ["quantize_guarded", "PRESETS", "Fidelity", "DEFAULT_TARGET", "MIN_COSINE", "LABEL_AGREEMENT"]

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


@dataclass(frozen=True)
class Fidelity:
    """A fidelity preset: the groups that start block-quantized, and the targets the guard
    holds the INT8 graph to on the calibration text (mean and worst cosine of mean-pooled
    hidden states with PyTorch FP32, nearest-neighbour agreement)."""

    name: str
    start_block: tuple[str, ...]  # group kinds: "intermediate", "output", "attention/output", "attention/self"
    mean: float
    worst: float
    nn: float | None
    summary: str


#: measured on held-out Italian text (docs/int8.md): block-quantizing the FFN MatMuls buys most
#: of the fidelity; the attention MatMuls matter less
PRESETS = {
    "fast": Fidelity(
        "fast",
        (),
        DEFAULT_TARGET,
        MIN_COSINE,
        None,
        "every MatMul DynamicQuantizeMatMul with position 0 apart: the fastest",
    ),
    "balanced": Fidelity(
        "balanced",
        ("output",),
        0.998,
        0.995,
        0.90,
        "the FFN output MatMuls block-quantized (8-bit, blocks of 32): near-fast speed",
    ),
    "faithful": Fidelity(
        "faithful",
        ("intermediate", "output"),
        0.999,
        0.998,
        0.95,
        "every FFN MatMul block-quantized, more groups by measured sensitivity until the targets hold",
    ),
}
BLOCK_SIZE = 32


def score(figures: dict[str, Any]) -> float:
    return (
        figures["embedding_cosine_mean"] if "embedding_cosine_mean" in figures else figures.get("label_agreement", 1.0)
    )


def meets_preset(figures: dict[str, Any], preset: Fidelity) -> bool:
    """The figures meet the preset's targets (classification graphs: label agreement)."""
    if "embedding_cosine_mean" not in figures:
        return figures.get("label_agreement", 1.0) >= LABEL_AGREEMENT
    nn_ok = preset.nn is None or figures.get("embedding_nn_agreement", 1.0) >= preset.nn
    return figures["embedding_cosine_mean"] >= preset.mean and figures["embedding_cosine_min"] >= preset.worst and nn_ok


def meets(figures: dict[str, Any], target: float) -> bool:
    return meets_preset(figures, Fidelity("target", (), target, MIN_COSINE, None, ""))


def quantize_guarded(
    fp32: Path,
    out: Path,
    batches: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    *,
    target: float = DEFAULT_TARGET,
    target_cpu: str = "auto",
    fidelity: str = "fast",
    embedding_bits: str = "auto",
    activations: str = "per-row",
    weight_rounding: str = "gptq",
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the INT8 graph; return (recipe, figures against PyTorch).

    The preset's starting recipe is measured first; while it misses the targets, the split
    groups are block-quantized in order of measured gain (the cheaper remedy: ~0.5x GEMM
    speed), then groups are kept in FP32 in order of gain (~0.3x), until the targets hold.
    """
    preset = PRESETS[fidelity]
    if fidelity == "fast" or target != DEFAULT_TARGET:
        preset = replace(preset, mean=max(target, preset.mean) if fidelity != "fast" else target)
    onnx = require("onnx")
    groups = _groups(quantizable_nodes(onnx.load(str(fp32), load_external_data=False)))
    run = _Attempts(fp32, out, batches, reference, target_cpu, (embedding_bits, activations))
    # once for every attempt: per row, LayerNorm outputs smoothed with scales fixed at export (the
    # other inputs take the row's own); GPTQ, the calibration text's XᵀX by MatMul input
    per_row, gptq = activations == "per-row", weight_rounding == "gptq"
    run.smooth, run.static, run.hessians = _calibrate(fp32, batches, per_row, gptq)
    block = [g for g in groups if g.split("/", 1)[-1] in preset.start_block]
    keep: list[str] = []
    figures = run(groups, block, keep)
    if not meets_preset(figures, preset):
        log(f"int8 ({preset.name}) misses its targets ({_brief(figures)}); ranking {len(groups)} groups of nodes")
        for remedy in ("block", "fp32"):
            figures = _escalate(run, groups, block, keep, remedy, preset, log)
            if meets_preset(figures, preset):
                break
        else:
            raise ExportError(
                f"the INT8 graph cannot reach the fidelity target {preset.mean} ({preset.name} preset) on the "
                f"calibration text even with every quantized node in FP32 ({_brief(figures)}); lower "
                f"--fidelity-target, choose a lower --fidelity, or export --precision fp32"
            )
    recipe = run.recipe
    if "smoothing" in recipe:
        recipe["smoothing"]["alpha"] = SMOOTH_ALPHA
    recipe["fidelity"] = {"preset": preset.name, "mean": preset.mean, "worst": preset.worst, "nn": preset.nn}
    recipe["fidelity_target"] = preset.mean
    recipe["groups"] = {g: "fp32" if g in keep else (f"block{BLOCK_SIZE}" if g in block else "int8") for g in groups}
    if keep:
        recipe["fp32_groups"] = list(keep)
    return recipe, figures


def _brief(figures: dict[str, Any]) -> str:
    if "embedding_cosine_mean" not in figures:
        return f"label agreement {figures.get('label_agreement', 1.0):.4f}"
    nn = figures.get("embedding_nn_agreement")
    return f"cosine mean {figures['embedding_cosine_mean']:.5f}, worst {figures['embedding_cosine_min']:.5f}" + (
        f", nearest neighbours {nn:.1%}" if nn is not None else ""
    )


def _calibrate(fp32: Path, batches: list[dict[str, Any]], smooth: bool, gptq: bool) -> tuple[dict, dict, dict]:
    """SmoothQuant's factors and fixed-scale peaks (``smooth``) and GPTQ's ``XᵀX`` (``gptq``) from
    one pass of the calibration text through the FP32 graph."""
    model = require("onnx").load(str(fp32))
    groups = layernorm_groups(model) if smooth else {}
    seen, hessians = calibration_statistics(model, batches, peaks=groups, moments=matmul_inputs(model) if gptq else ())
    factors, peaks = smoothing_of(model, groups, seen) if groups else ({}, {})
    return factors, peaks, hessians


class _Attempts:
    """Quantize with a recipe and measure it against PyTorch; the last recipe is kept."""

    def __init__(
        self,
        fp32: Path,
        out: Path,
        batches: Any,
        reference: Any,
        target_cpu: str,
        build: tuple[str, str] = ("auto", "per-tensor"),
    ) -> None:
        self.fp32, self.out, self.batches, self.reference, self.target_cpu = fp32, out, batches, reference, target_cpu
        self.embedding_bits, self.activations = build  # the word table's bits; activations per tensor or per row
        self.smooth: dict[str, Any] = {}  # SmoothQuant factors by MatMul input (per-row only)
        self.static: dict[str, float] = {}  # the smoothed inputs' calibrated peaks (per-row only)
        self.hessians: dict[str, Any] = {}  # XᵀX by MatMul input: GPTQ-rounded weights
        self.recipe: dict[str, Any] = {}

    def __call__(self, groups: dict[str, list[str]], block: list[str], keep: list[str]) -> dict[str, Any]:
        ort = require("onnxruntime")
        blocked = {n: BLOCK_SIZE for g in block for n in groups[g]}
        kept = [n for g in keep for n in groups[g]]
        self.recipe = quantize_int8(
            self.fp32,
            self.out,
            target=self.target_cpu,
            keep_fp32=kept,
            block=blocked,
            embedding_bits=self.embedding_bits,
            activations=self.activations,
            smooth=self.smooth,
            static=self.static,
            hessians=self.hessians,
        )
        session = ort.InferenceSession(str(self.out), providers=["CPUExecutionProvider"])
        return compare(self.batches, self.reference, onnx_outputs(session, self.batches))


def _escalate(
    run: _Attempts,
    groups: dict[str, list[str]],
    block: list[str],
    keep: list[str],
    remedy: str,
    preset: Fidelity,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Apply ``remedy`` (block-quantize, or keep in FP32) to one group at a time in order of
    measured gain until the preset's targets hold; ``block``/``keep`` grow in place."""
    chosen = keep if remedy == "fp32" else block
    # blocks apply to the encoder's MatMuls; FP32 to any quantized group
    candidates = [
        g for g in groups if g not in keep and (remedy == "fp32" or (g not in block and g.startswith("layer.")))
    ]
    gains = {}
    for g in candidates:
        trial_block = block + [g] if remedy == "block" else block
        trial_keep = keep + [g] if remedy == "fp32" else keep
        gains[g] = score(run(groups, trial_block, trial_keep))
    figures: dict[str, Any] = {}
    ordered = sorted(candidates, key=lambda c: -gains[c])
    for count, g in enumerate(ordered, 1):
        chosen.append(g)
        figures = run(groups, block, keep)
        met = meets_preset(figures, preset)
        if met or count == len(ordered) or count & (count - 1) == 0:  # 1, 2, 4, 8... and the last: a short log
            log(f"  {count} more group(s) {remedy} (last: {g}): {_brief(figures)}")
        if met:
            break
    return figures
