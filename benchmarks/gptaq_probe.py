"""Probe (issue #36): weights fitted to the INT8 graph's own inputs, then GPTQ-rounded — a recorded miss.

GPTQ (the exporter's default, export/rounding.py) minimizes ``|X W - X Ŵ|`` with the FP32
activations ``X`` on both sides, but the INT8 graph's MatMuls read quantized inputs ``X̂`` — their
own rounding and every earlier layer's error. This probe measures the asymmetric objective
``|X W - X̂ Ŵ|`` (GPTAQ-style, Li et al., 2025): per MatMul input, ``X̂`` is read out of the INT8
graph (the integers and scales its ``MatMulIntegerToFloat`` gets) and ``X`` out of the FP32 graph
on the same calibration text; the weight is refitted by ridge regression towards the original
``W`` (``(X̂ᵀX̂ + λI)⁻¹ (X̂ᵀX W + λW)``), the mean output shift goes into the bias (unless
``--no-shift``), and GPTQ rounds the result against ``X̂ᵀX̂``. ``--sequential`` takes one input at
a time, in graph order, its ``X̂`` from the graph refitted so far (in one pass every layer also
corrects the error the layers before it already corrected). ``--plain`` skips the refit: the
exporter's GPTQ at another damping or calibration text. Nothing changes at run time.

    python -m benchmarks.gptaq_probe artifacts/bench/minilm-rows artifacts/exp/minilm-gptaq-seq --sequential
    python -m benchmarks.gptaq_probe artifacts/bench/minilm-rows artifacts/exp/minilm-gptq-d0.1 --plain --damp 0.1
    python -m benchmarks.activations artifacts/exp/minilm-gptq artifacts/exp/minilm-gptaq-seq \
        --corpus ../shared/data/wikineural-it/val.conllu

Measured on all-MiniLM-L6-v2 (1,000 WikiNEuRal-it sentences, Intel Xeon with AMX, 2026-12-06;
docs/int8.md): plain GPTQ 0.99922-0.99925 cosine, NN 92.8-94.1%; one pass 0.99213 (78.6%,
over-corrected); sequential 0.99906 (92.3%), without the bias shift 0.99904 (92.0%), sequential
on the 563 ISDT dev calibration sentences 91.3% against plain GPTQ's 94.1% on the same text. Not adopted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _feeds(session: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in batch.items() if k in wanted}


def _session(model: Any, names: list[str]) -> Any:
    import onnx
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in names if x not in have)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor by name
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def quantized_inputs(int8: Any) -> dict[str, tuple[str, str, str, str]]:
    """By FP32 MatMul input: the INT8 graph's (integers, a_scale, zero point) tensor names and
    how the input got there (``Mul`` by ``1/(sσ)``: static, ``Reshape``: per row)."""
    producers = {o: n for n in int8.graph.node for o in n.output}
    found = {}
    for n in int8.graph.node:
        if n.op_type != "MatMulIntegerToFloat":
            continue
        ql = producers.get(n.input[0])
        if ql is None or ql.op_type != "QuantizeLinear":
            continue
        before = producers[ql.input[0]]
        found[before.input[0]] = (n.input[0], n.input[2], n.input[4], before.op_type)
    return found


def moments(
    fp32: Path,
    int8: Path,
    batches: list[dict[str, np.ndarray]],
    smooth: dict[str, np.ndarray],
    only: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per MatMul input (in the space the INT8 weight multiplies: ``x / s`` where smoothed):
    ``X̂ᵀX̂``, ``X̂ᵀX``, the rows' sums of ``X`` and ``X̂`` and their count."""
    import onnx
    from onnx import numpy_helper

    q8 = onnx.load(str(int8))
    inits = {t.name: numpy_helper.to_array(t) for t in q8.graph.initializer}
    where = quantized_inputs(q8)
    names = sorted(x for x in where if only is None or x in only)
    where = {x: where[x] for x in names}
    ref = _session(onnx.load(str(fp32)), names)
    extra = sorted({t for q, s, _, _ in where.values() for t in (q, s) if t not in inits})
    run = _session(q8, extra)
    acc: dict[str, dict[str, Any]] = {x: {"hh": 0.0, "hx": 0.0, "sx": 0.0, "sh": 0.0, "n": 0} for x in names}
    for batch in batches:
        keep = batch["attention_mask"].astype(bool).reshape(-1)
        xs = dict(zip(names, ref.run(names, _feeds(ref, batch))))
        got = dict(zip(extra, run.run(extra, _feeds(run, batch))))
        for x in names:
            q, s, zp, kind = where[x]
            k = xs[x].shape[-1]
            clean = xs[x].reshape(-1, k)[keep].astype(np.float64) / smooth.get(x, np.ones(k))
            ints = got[q].reshape(-1, k)[keep].astype(np.float64) - float(inits[zp])
            scale = got[s] if s in got else inits[s]
            scale = np.asarray(scale, np.float64).reshape(-1, 1)
            hat = ints * (scale[keep] if scale.shape[0] == keep.size else scale)
            a = acc[x]
            a["hh"] = a["hh"] + hat.T @ hat
            a["hx"] = a["hx"] + hat.T @ clean
            a["sx"] = a["sx"] + clean.sum(0)
            a["sh"] = a["sh"] + hat.sum(0)
            a["n"] += len(clean)
    return acc


def refit(w: np.ndarray, m: dict[str, Any], damp: float) -> tuple[np.ndarray, np.ndarray]:
    """The weight ``(X̂ᵀX̂ + λI)⁻¹ (X̂ᵀX W + λW)`` and the mean output shift ``mean(X W - X̂ W*)``."""
    hh = m["hh"]
    lam = damp * np.mean(np.diag(hh))
    fitted = np.linalg.solve(hh + lam * np.eye(len(hh)), m["hx"] @ w + lam * w)
    shift = (m["sx"] @ w - m["sh"] @ fitted) / m["n"]
    return fitted, shift


def _calibration(bundle: Path, prefix: str, corpus: str | None) -> list[dict[str, np.ndarray]]:
    from tokenizers import Tokenizer

    from flare_onnx_export.sample import italian_sentences, read_corpus
    from flare_onnx_export.verify import make_batches

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    pad = json.loads((bundle / "config.json").read_text()).get("pad_token_id", 0)
    texts = read_corpus(corpus, limit=1000) if corpus else italian_sentences()
    return make_batches(tok, [prefix + t for t in texts], pad_id=pad, mask_id=None, max_length=512)


def _refit_step(model: Any, fitted: dict[str, Any], acc: dict[str, dict[str, Any]], smooth: dict[str, np.ndarray],
                args: argparse.Namespace) -> dict[str, np.ndarray]:  # fmt: skip
    """The MatMuls reading ``acc``'s inputs refitted in ``fitted`` (weights, and biases unless
    ``--no-shift``); returns their inputs' ``X̂ᵀX̂`` in the unsmoothed space, for GPTQ."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    hessians = {}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[0] not in acc or n.input[1] not in inits:
            continue
        x, s = n.input[0], smooth.get(n.input[0])
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        new, shift = refit(w if s is None else w * s[:, None], acc[x], args.damp)
        new = new if s is None else new / s[:, None]
        fitted[n.input[1]].CopyFrom(numpy_helper.from_array(new.astype(np.float32), n.input[1]))
        add = next((a for a in model.graph.node if a.op_type == "Add" and n.output[0] in a.input), None)
        bias = next((i for i in (add.input if add else []) if i in inits), None)
        if bias and not args.no_shift:
            b = numpy_helper.to_array(inits[bias]).astype(np.float64) + shift
            fitted[bias].CopyFrom(numpy_helper.from_array(b.astype(np.float32), bias))
        hh = acc[x]["hh"]
        hessians[x] = hh if s is None else hh * np.outer(s, s)  # back in x's space
    return hessians


def main(argv: list[str] | None = None) -> int:
    import onnx

    import flare_onnx_export.rounding as rounding
    from benchmarks.fusion_probe import _with_graph
    from flare_onnx_export.quantize import quantize_int8
    from flare_onnx_export.smoothing import smoothing

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--prefix", default="")
    p.add_argument("--damp", type=float, default=0.1, help="ridge λ and GPTQ damping, × mean diag(X̂ᵀX̂)")
    p.add_argument("--calibration", help="a corpus instead of the shipped sample (first 1,000 sentences)")
    p.add_argument("--no-gptq", action="store_true", help="refit only, then round to nearest")
    p.add_argument("--sequential", action="store_true", help="one input at a time, X̂ from the graph refitted so far")
    p.add_argument("--no-shift", action="store_true", help="leave the biases as they are")
    p.add_argument("--plain", action="store_true", help="no refit: the exporter's GPTQ, at this --damp and calibration")
    args = p.parse_args(argv)
    batches = _calibration(args.bundle, args.prefix, args.calibration)
    fp32 = args.bundle / "model.fp32.onnx"
    smooth, static = smoothing(fp32, batches)
    model = onnx.load(str(fp32))
    inits = {t.name for t in model.graph.initializer}
    work = Path(tempfile.mkdtemp())
    int8, refitted = work / "int8.onnx", work / "fp32-refitted.onnx"
    rounding.gptq.__defaults__ = (args.damp,)  # the probe's damping for the exporter's GPTQ too
    fitted = onnx.load(str(fp32))
    finits = {t.name: t for t in fitted.graph.initializer}
    order = list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits))
    hessians: dict[str, np.ndarray] = rounding.input_hessians(fp32, batches) if args.plain else {}
    steps = [] if args.plain else [[x] for x in order] if args.sequential else [order]
    for step in steps:  # sequential: each input's X̂ from the graph refitted so far
        onnx.save(fitted, str(refitted))
        quantize_int8(refitted, int8, activations="per-row", smooth=smooth, static=static,
                      hessians={} if args.no_gptq else hessians)  # fmt: skip
        hessians.update(_refit_step(model, finits, moments(fp32, int8, batches, smooth, only=step), smooth, args))
    onnx.save(fitted, str(refitted))
    quantize_int8(refitted, int8, activations="per-row", smooth=smooth, static=static,
                  hessians={} if args.no_gptq else hessians)  # fmt: skip
    _with_graph(args.bundle, int8, args.output)
    shutil.rmtree(work)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
