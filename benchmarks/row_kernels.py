"""One encoder MatMul, alone, in every INT8 form the project has measured (issue #36):
``python -m benchmarks.row_kernels [--tokens 1024] [--threads 1] [--json FILE]``.

Each form is a one-MatMul onnxruntime graph on random data with the shapes of a 384-wide
encoder (Q/K/V packed 384×1152, FFN in 384×1536, FFN out 1536×384), bias included, timed as
the median of repeated runs:

* ``fp32`` — ``MatMul`` + ``Add``;
* ``dqmm`` — ``DynamicQuantizeMatMul`` (activations per tensor, quantized inside the kernel,
  the bias fused): flare-onnx's default;
* ``per-row`` — what per-row activations take in standard ops: ``Abs`` + ``ReduceMax`` for each
  row's scale, ``QuantizeLinear`` along the rows, ``MatMulIntegerToFloat``, the row-scale ``Mul``
  and the bias ``Add``;
* ``per-row-minmax`` — the same with ``ReduceMax`` + ``ReduceMin`` for the scale (no ``Abs``);
* ``per-row-fused-bias`` / ``per-row-gemm-only`` — per-row without the bias ``Add`` / without
  the ``Add`` and the row-scale ``Mul`` (not the same result: what per-row would cost if those
  passes were fused into the ops after it);
* ``per-row-ascale`` — per-row with the row scales handed to ``MatMulIntegerToFloat`` as its
  ``a_scale`` (shape ``[rows, 1]``; onnxruntime scales its output in place), then the bias ``Add``:
  the exporter's per-row rows;
* ``static-mul`` / ``static-tensor`` / ``static-channel`` — a scale fixed at export (no reduction
  over the input), the bias inside the GEMM: a ``Mul`` (SmoothQuant's factors with the scale, the
  exporter's form for LayerNorm outputs) then ``QuantizeLinear``; ``QuantizeLinear`` alone; the
  ``Mul`` folded into ``QuantizeLinear``'s per-channel scales;
* ``nbits-b32`` / ``nbits-b128`` — ``MatMulNBits`` with 8-bit weights in blocks of 32 / 128 and
  activations quantized per row and block inside the kernel (``accuracy_level=4``), the faithful
  presets' kernel.

What it answers: how much of a per-row graph's cost is the GEMM and how much the standard ops
around it, on this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .machine import describe

SHAPES = {"qkv": (384, 1152), "ffn_in": (384, 1536), "ffn_out": (1536, 384)}


def _session(nodes: list[Any], inits: dict[str, np.ndarray], k: int, n: int, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "one_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", n])],
        [
            numpy_helper.from_array(np.asarray(v), name)
            for name, v in inits.items()
            if any(name in n.input for n in nodes)
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def forms(w: np.ndarray, b: np.ndarray, peak: float = 5.0) -> dict[str, tuple[list[Any], dict[str, np.ndarray]]]:
    """Every form's nodes and initializers for ``x @ w + b`` (``peak``: the largest ``|x|`` the
    forms with a scale fixed at export must cover)."""
    from onnx import helper

    k, n = w.shape
    ws = (np.abs(w).max(0) / 127).astype(np.float32)
    q = np.clip(np.rint(w / ws), -127, 127).astype(np.int8)
    out: dict[str, tuple[list[Any], dict[str, np.ndarray]]] = {
        "fp32": (
            [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
            {"w": w, "b": b},
        ),
        "dqmm": (
            [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws", "", "b"], ["y"], domain="com.microsoft")],
            {"w": q, "ws": ws, "b": b},
        ),
    }
    rows = {"w": q, "ws": ws, "b": b, "inv": np.float32(1 / 127), "zp": np.uint8(128), "one": np.float32(1.0)}
    rows["axis"] = np.array([-1], np.int64)
    tail = [
        helper.make_node("Shape", ["s"], ["rows"]),
        helper.make_node("Expand", ["zp", "rows"], ["zps"]),
        helper.make_node("QuantizeLinear", ["x", "s", "zps"], ["q"], axis=0),
        helper.make_node("MatMulIntegerToFloat", ["q", "w", "one", "ws", "zp"], ["mm"], domain="com.microsoft"),
        helper.make_node("Unsqueeze", ["s", "axis"], ["s2"]),
        helper.make_node("Mul", ["mm", "s2"], ["ys"]),
        helper.make_node("Add", ["ys", "b"], ["y"]),
    ]
    out["per-row"] = (
        [
            helper.make_node("Abs", ["x"], ["abs"]),
            helper.make_node("ReduceMax", ["abs"], ["max"], axes=[1], keepdims=0),
            helper.make_node("Mul", ["max", "inv"], ["s"]),
            *tail,
        ],
        rows,
    )
    out["per-row-minmax"] = (
        [
            helper.make_node("ReduceMax", ["x"], ["hi"], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", ["x"], ["lo"], axes=[1], keepdims=0),
            helper.make_node("Neg", ["lo"], ["neg"]),
            helper.make_node("Max", ["hi", "neg"], ["max"]),
            helper.make_node("Mul", ["max", "inv"], ["s"]),
            *tail,
        ],
        rows,
    )
    # what per-row would cost if its bias Add, then also its row-scale Mul, were fused elsewhere
    out["per-row-fused-bias"] = (out["per-row"][0][:-2] + [helper.make_node("Mul", ["mm", "s2"], ["y"])], rows)
    out["per-row-gemm-only"] = (
        out["per-row"][0][:3]
        + tail[:3]
        + [helper.make_node("MatMulIntegerToFloat", ["q", "w", "one", "ws", "zp"], ["y"], domain="com.microsoft")],
        rows,
    )
    # the row scales handed to MatMulIntegerToFloat as its a_scale, shape [rows, 1]: onnxruntime
    # multiplies its output by them in place (ScaleOutput); the bias must then follow as an Add
    out["per-row-ascale"] = (
        out["per-row"][0][:3]
        + [
            helper.make_node("Unsqueeze", ["s", "axis"], ["s2"]),
            *tail[:3],
            helper.make_node("MatMulIntegerToFloat", ["q", "w", "s2", "ws", "zp"], ["mm"], domain="com.microsoft"),
            helper.make_node("Add", ["mm", "b"], ["y"]),
        ],
        rows,
    )
    # scales fixed at export (the input's calibrated peak over 127), the bias fused into the GEMM:
    # ``static-mul`` the exporter's form — one Mul by 1 / (s σ) (SmoothQuant's factors and σ in one
    # constant; s = 1 here), QuantizeLinear at scale 1; ``static-tensor`` without the Mul (no
    # smoothing); ``static-channel`` the Mul folded into QuantizeLinear's per-channel scales
    sigma = np.float32(peak / 127)
    gemm_bias = helper.make_node(
        "MatMulIntegerToFloat", ["q", "w", "sigma", "ws", "zp", "", "b"], ["y"], domain="com.microsoft"
    )
    static = dict(rows, sigma=sigma, inv=np.full(k, 1 / sigma, np.float32), cs=np.full(k, sigma, np.float32),
                  zpc=np.full(k, 128, np.uint8))  # fmt: skip
    out["static-mul"] = (
        [
            helper.make_node("Mul", ["x", "inv"], ["xs"]),
            helper.make_node("QuantizeLinear", ["xs", "one", "zp"], ["q"]),
            gemm_bias,
        ],
        static,
    )
    out["static-tensor"] = ([helper.make_node("QuantizeLinear", ["x", "sigma", "zp"], ["q"]), gemm_bias], static)
    out["static-channel"] = ([helper.make_node("QuantizeLinear", ["x", "cs", "zpc"], ["q"], axis=1), gemm_bias], static)
    for block in (32, 128):
        blocks = w.T.reshape(n, k // block, block)
        scale = (np.abs(blocks).max(-1) / 127).astype(np.float32)
        packed = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        node = helper.make_node(
            "MatMulNBits", ["x", "w", "sc", "", "", "b"], ["y"], domain="com.microsoft",
            K=k, N=n, bits=8, block_size=block, accuracy_level=4,
        )  # fmt: skip
        out[f"nbits-b{block}"] = ([node], {"w": packed, "sc": scale, "b": b})
    return out


def measure(tokens: int, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {}
    for name, (k, n) in SHAPES.items():
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal((tokens, k)).astype(np.float32)
        made = forms(w, b, float(np.abs(x).max()))
        sessions = {form: _session(nodes, inits, k, n, threads) for form, (nodes, inits) in made.items()}
        times: dict[str, list[float]] = {form: [] for form in sessions}
        for s in sessions.values():
            s.run(None, {"x": x})
        for _ in range(repeats):  # interleaved
            for form, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {"x": x})
                times[form].append(1e3 * (time.perf_counter() - t0))
        result[name] = {form: statistics.median(t) for form, t in times.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="rows of the activation (a batch's tokens)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = measure(args.tokens, args.threads, args.repeats)
    forms_ = list(next(iter(result.values())))
    print(f"ms per call, {args.tokens} tokens, {args.threads} thread(s), median of {args.repeats} (× dqmm)")
    print("| MatMul | " + " | ".join(forms_) + " |")
    print("|---" * (len(forms_) + 1) + "|")
    for name, row in result.items():
        cells = " | ".join(f"{row[f]:.2f} ({row[f] / row['dqmm']:.2f}×)" for f in forms_)
        print(f"| {name} {SHAPES[name][0]}×{SHAPES[name][1]} | {cells} |")
    if args.json:
        record = {"machine": describe(), "tokens": args.tokens, "threads": args.threads, "ms": result}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
