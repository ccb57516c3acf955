"""Probe: per-row INT8 with its epilogues fused into onnxruntime's contrib ops (issue #36).

    python -m benchmarks.epilogue_probe DEFAULT_BUNDLE PER_ROW_BUNDLE --corpus FILE [--prefix "query: "]

A per-row graph (``export --activations per-row``) adds, after each ``MatMulIntegerToFloat``,
the row-scale ``Mul`` and the bias ``Add`` that ``DynamicQuantizeMatMul`` fuses. This probe
rewrites the per-row bundle's INT8 graph so those passes ride on ops that pass over the data
anyway, and times it against both bundles in interleaved passes:

* bias ``Add`` → ``Gelu`` becomes ``BiasGelu`` (FFN in);
* bias ``Add`` → residual ``Add`` → ``LayerNormalization`` becomes ``SkipLayerNormalization``
  (attention output, FFN out);
* each row's ``Abs`` + ``ReduceMax`` becomes ``ReduceMax`` + ``ReduceMin`` (no ``Abs`` tensor).

The rewrite must not change the numbers beyond float rounding; the probe reports the largest
difference of the embeddings against the unfused per-row graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .fusion_probe import _fidelity, _with_graph
from .int8_probe import _speed
from .machine import describe


def fuse_epilogues(src: Path, dst: Path) -> dict[str, int]:
    """Write ``src`` with the three rewrites above; return how many of each were made."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[str] = set()
    replace: dict[str, list[Any]] = {}
    made = {"BiasGelu": 0, "SkipLayerNormalization": 0, "ReduceMin": 0}
    for n in model.graph.node:
        bias = next((i for i in n.input if i in inits and len(inits[i].dims) == 1), None)
        users = consumers.get(n.output[0], []) if n.output else []
        if n.op_type == "Add" and bias is not None and len(users) == 1:
            y, user = next(i for i in n.input if i != bias), users[0]
            if user.op_type == "Gelu":
                replace[n.name] = [
                    helper.make_node(
                        "BiasGelu", [y, bias], [user.output[0]], domain="com.microsoft", name=n.name + "_bg"
                    )
                ]
                drop.add(user.name)
                made["BiasGelu"] += 1
                continue
            after = consumers.get(user.output[0], [])
            if user.op_type == "Add" and len(after) == 1 and after[0].op_type == "LayerNormalization":
                norm, residual = after[0], next(i for i in user.input if i != n.output[0])
                eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
                replace[n.name] = [
                    helper.make_node(
                        "SkipLayerNormalization", [y, residual, norm.input[1], norm.input[2], bias], [norm.output[0]],
                        domain="com.microsoft", name=n.name + "_skipln", epsilon=eps,
                    )
                ]  # fmt: skip
                drop |= {user.name, norm.name}
                made["SkipLayerNormalization"] += 1
        if n.op_type == "Abs" and n.name.endswith("_row_abs"):
            peak = consumers[n.output[0]][0]
            b = n.name
            replace[n.name] = [
                helper.make_node("ReduceMax", [n.input[0]], [b + "_hi"], axes=[1], keepdims=0),
                helper.make_node("ReduceMin", [n.input[0]], [b + "_lo"], axes=[1], keepdims=0),
                helper.make_node("Neg", [b + "_lo"], [b + "_neg"]),
                helper.make_node("Max", [b + "_hi", b + "_neg"], [peak.output[0]]),
            ]
            drop.add(peak.name)
            made["ReduceMin"] += 1
    nodes = []
    for n in model.graph.node:
        if n.name not in drop:
            nodes += replace.get(n.name, [n])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return made


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx_export import read_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("default", type=Path, help="a bundle exported with the default (per-tensor) INT8")
    parser.add_argument("per_row", type=Path, help="the same model exported with --activations per-row")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    texts = [args.prefix + t for t in texts]
    with tempfile.TemporaryDirectory(prefix="flare-epilogue-") as tmp:
        record = json.loads((args.per_row / "manifest.json").read_text())
        fused = Path(tmp) / "fused.onnx"
        made = fuse_epilogues(args.per_row / record["graphs"]["int8"]["file"], fused)
        bundles = {
            "fast": args.default,
            "per-row": args.per_row,
            "per-row-fused": _with_graph(args.per_row, fused, Path(tmp) / "b"),
        }
        models = {
            k: (flare_onnx.load(b, threads=2, workload="bulk"), flare_onnx.load(b, threads=2))
            for k, b in bundles.items()
        }
        tokens = sum(len(e.ids) + 2 for e in models["fast"][0].tokenizer.encode(texts))
        speed = _speed(models, texts, tokens, args.passes, 50)
        reference = flare_onnx.load(args.default, precision="fp32", threads=2).embed(texts)
        out = {k: models[k][0].embed(texts) for k in models}
    rows = {k: {**_fidelity(out[k], reference), **speed[k]} for k in models}
    result = {"machine": describe(), "texts": len(texts), "rewrites": made, "rows": rows,
              "fused_vs_unfused_max_abs": float(np.abs(out["per-row-fused"] - out["per-row"]).max())}  # fmt: skip
    print(f"rewrites {made}; fused against unfused: max |Δ| {result['fused_vs_unfused_max_abs']:.2e}")
    for k, r in rows.items():
        print(f"{k}: cosine {r['cosine_mean']:.5f} / {r['cosine_min']:.5f}, NN {r['nn']:.1%}, "
              f"{r['tokens_per_s']:,.0f} tokens/s ({r['vs_fast']:.2f}×), batch-1 p50 {r['p50_ms']:.2f} ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
