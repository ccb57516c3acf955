"""INT8 quantization of an exported FP32 graph, written for BERT-family encoders on CPUs.

onnxruntime's ``quantize_dynamic`` quantizes each MatMul's activations with one scale per
tensor. In these encoders the first token (``<s>``/``[CLS]``) carries activations 6-8x larger
than any other token's ("massive activations"), so one scale wastes about three bits on every
other token: on the real all-MiniLM-L6-v2 weights mean-pooled embeddings drop to a cosine of
~0.991 with FP32 and only ~77% of nearest neighbours survive. This pass instead:

* quantizes every weight matrix per output column, symmetric INT8 (7-bit where the CPU lacks
  VNNI, because AVX2's ``vpmaddubsw`` saturates 16-bit sums of full-range products);
* runs each encoder MatMul as two ``DynamicQuantizeMatMul`` (com.microsoft) calls sharing one
  INT8 weight: position 0 with its own activation scale, positions 1.. with theirs, then a
  Concat;
* stores embedding tables INT8 per row: a lookup dequantizes the rows it gathers, and the
  tied MLM projection multiplies by the same word table (transposed once when the session is
  created), so the table is stored once;
* leaves FP32 whatever node names ``keep_fp32`` lists (the export's accuracy guard fills it).
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from flare_onnx.errors import ExportError

from ._deps import require

__all__ = ["quantize_int8", "cpu_has_vnni", "quantizable_nodes", "TARGETS"]

TARGETS = ("auto", "vnni", "avx2")
_INT64_MAX = np.iinfo(np.int64).max


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (u8×s8 dot products into 32 bits)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().lower() in ("arm64", "aarch64")
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _qmax(target: str) -> tuple[int, str]:
    if target not in TARGETS:
        raise ExportError(f"target_cpu must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "auto":
        target = "vnni" if cpu_has_vnni() else "avx2"
    return (127 if target == "vnni" else 63), target


def _ranks(model: Any) -> dict[str, int]:
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = len(t.shape.dim)
    return out


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the nodes the pass quantizes: MatMul/Gemm with a 2-D weight, embedding lookups."""
    inits = {t.name: t for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if (n.op_type in ("MatMul", "Gemm") and n.input[1] in inits and len(inits[n.input[1]].dims) == 2)
        or (n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2 and inits[n.input[0]].dims[0] >= 64)
    ]


def _word_embedding(model: Any) -> str | None:
    """The initializer gathered by ``input_ids`` (the word-embedding table), if any."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[1] == "input_ids" and n.input[0] in inits:
            return n.input[0]
    return None


def quantize_int8(
    fp32: Path,
    out: Path,
    *,
    target: str = "auto",
    keep_fp32: Iterable[str] = (),
    split_first: bool | Iterable[str] = True,
    pack_shared: bool = True,
) -> dict[str, Any]:
    """Write the INT8 graph of ``fp32`` to ``out``; return the recipe for the manifest."""
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    qmax, target = _qmax(target)
    keep = set(keep_fp32)
    split_set = set() if isinstance(split_first, bool) else set(split_first)
    model = onnx.load(str(fp32))
    graph = model.graph
    ranks = _ranks(model)
    inits = {t.name: t for t in graph.initializer}
    emb_name = _word_embedding(model)
    new_inits: list[Any] = []
    consts: dict[str, str] = {}
    counter = defaultdict(int)

    def unique(base: str) -> str:
        counter[base] += 1
        return f"{base}__{counter[base]}"

    def const(name: str, value: np.ndarray) -> str:
        if name not in consts:
            new_inits.append(numpy_helper.from_array(value, name))
            consts[name] = name
        return name

    def new_init(name: str) -> Any:
        return next(t for t in new_inits if t.name == name)

    def per_column(name: str, transposed: bool = False) -> tuple[str, str]:
        if f"{name}_int8" not in consts:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            w = w.T.copy() if transposed else w
            scale = np.abs(w).max(axis=0) / qmax
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
            const(f"{name}_int8", q)
            const(f"{name}_scale", scale.astype(np.float32))
        return f"{name}_int8", f"{name}_scale"

    tables: dict[str, tuple[str, str]] = {}  # embedding initializer -> (int8 rows, row scales)
    for n in graph.node:
        t = inits.get(n.input[0]) if n.op_type == "Gather" else None
        if t is not None and len(t.dims) == 2 and t.dims[0] >= 64 and n.input[0] not in tables and n.name not in keep:
            e = numpy_helper.to_array(t).astype(np.float32)
            row_scale = np.abs(e).max(axis=1) / qmax
            row_scale[row_scale == 0] = 1.0
            q = np.clip(np.rint(e / row_scale[:, None]), -qmax, qmax).astype(np.int8)
            tables[n.input[0]] = (const(f"{n.input[0]}_int8", q), const(f"{n.input[0]}_row_scale", row_scale.astype(np.float32)))
    emb_q, emb_s = tables.get(emb_name or "", (None, None))

    nodes: list[Any] = []
    quantized: list[str] = []
    split: list[str] = []
    # A MatMul whose only consumer adds a bias vector: the bias goes into the quantized
    # MatMul (one pass less over the output, and ORT can then fuse the residual Add and
    # LayerNorm, and use Gelu instead of BiasGelu).
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}
    # the exporter shares identical tensors (a model's zero biases) through Identity nodes
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def eligible(n: Any) -> bool:
        return n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2 and n.name not in keep

    bias_of: dict[str, tuple[str, str]] = {}  # MatMul name -> (bias initializer, output name)
    fused_adds: set[str] = set()
    for n in graph.node:
        if not eligible(n) or n.output[0] in outputs or len(consumers[n.output[0]]) != 1:
            continue
        add = consumers[n.output[0]][0]
        other = [aliases.get(i, i) for i in add.input if i != n.output[0]]
        if add.op_type == "Add" and len(other) == 1 and other[0] in inits and list(inits[other[0]].dims) == [inits[n.input[1]].dims[1]]:
            bias_of[n.name] = (other[0], add.output[0])
            fused_adds.add(add.name)
    # MatMuls that read the same activation (an attention block's Q, K and V) become one
    # MatMul over the concatenated weights: the activation is quantized once, one GEMM runs.
    by_input: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        if eligible(n):
            by_input[n.input[0]].append(n)
    packs: dict[str, list[Any]] = {}
    for group in by_input.values():
        if pack_shared and len(group) > 1 and all(g.name in bias_of for g in group):
            for g in group:
                packs[g.name] = group
        else:
            for g in group:
                packs[g.name] = [g]

    def _matmul(members: list[Any]) -> list[Any]:
        """DynamicQuantizeMatMul node(s) for MatMuls sharing one input (bias fused when known)."""
        a = members[0].input[0]
        base = unique(members[0].name.strip("/").replace("/", "_") or "mm")
        if len(members) == 1:
            q, sc = per_column(members[0].input[1])
            bias = bias_of.get(members[0].name, ("", members[0].output[0]))
            outs = [bias[1]]
            bias_name = bias[0]
        else:
            qs = [per_column(m.input[1]) for m in members]
            q = const(f"{base}_packed_int8", np.concatenate([numpy_helper.to_array(new_init(x)) for x, _ in qs], axis=1))
            sc = const(f"{base}_packed_scale", np.concatenate([numpy_helper.to_array(new_init(x)) for _, x in qs]))
            bias_name = const(f"{base}_packed_bias", np.concatenate(
                [numpy_helper.to_array(inits[bias_of[m.name][0]]).astype(np.float32) for m in members]))
            outs = [bias_of[m.name][1] for m in members]
        y = outs[0] if len(outs) == 1 else f"{base}_packed"
        made: list[Any] = []
        if (split_first is True or (split_first and any(m.name in split_set for m in members))) and ranks.get(a) == 3:
            starts0 = const("slice_0", np.array([0], np.int64))
            starts1 = const("slice_1", np.array([1], np.int64))
            end = const("slice_end", np.array([_INT64_MAX], np.int64))
            axis = const("slice_axis1", np.array([1], np.int64))
            made += [
                helper.make_node("Slice", [a, starts0, starts1, axis], [f"{base}_a0"], name=f"{base}_slice0"),
                helper.make_node("Slice", [a, starts1, end, axis], [f"{base}_a1"], name=f"{base}_slice1"),
                helper.make_node("DynamicQuantizeMatMul", [f"{base}_a0", q, sc, "", bias_name], [f"{base}_y0"], domain="com.microsoft", name=f"{base}_dqmm0"),
                helper.make_node("DynamicQuantizeMatMul", [f"{base}_a1", q, sc, "", bias_name], [f"{base}_y1"], domain="com.microsoft", name=f"{base}_dqmm1"),
                helper.make_node("Concat", [f"{base}_y0", f"{base}_y1"], [y], axis=1, name=f"{base}_concat"),
            ]
            split.extend(m.name for m in members)
        else:
            made.append(helper.make_node("DynamicQuantizeMatMul", [a, q, sc, "", bias_name], [y], domain="com.microsoft", name=f"{base}_dqmm"))
        if len(outs) > 1:
            sizes = const(f"{base}_split_sizes", np.array([inits[m.input[1]].dims[1] for m in members], np.int64))
            made.append(helper.make_node("Split", [y, sizes], outs, axis=-1, name=f"{base}_split"))
        quantized.extend(m.name for m in members)
        return made

    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in tables:
            # INT8 rows, dequantized after the lookup: rows * scale[id]
            table_q, table_s = tables[node.input[0]]
            base = unique("emb")
            rows, scale, scale3 = f"{base}_rows", f"{base}_scale", f"{base}_scale3"
            nodes += [
                helper.make_node("Gather", [table_q, node.input[1]], [rows], name=f"{base}_gather"),
                helper.make_node("Gather", [table_s, node.input[1]], [scale], name=f"{base}_gather_scale"),
                helper.make_node("Unsqueeze", [scale, const("axes_last", np.array([-1], np.int64))], [scale3], name=f"{base}_unsqueeze"),
                helper.make_node("Cast", [rows], [f"{rows}_f"], to=onnx.TensorProto.FLOAT, name=f"{base}_cast"),
                helper.make_node("Mul", [f"{rows}_f", scale3], [node.output[0]], name=f"{base}_mul"),
            ]
            quantized.append(node.name)
            continue
        if (
            node.op_type == "Gemm"
            and node.input[1] == emb_name
            and emb_q is not None
            and node.name not in keep
            and {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("transB") == 1
        ):
            # The tied MLM projection: rows @ E^T with E's INT8 rows, per-vocabulary scales.
            base = unique("mlm")
            bias = node.input[2] if len(node.input) > 2 else ""
            nodes += [
                helper.make_node("Transpose", [emb_q], [f"{base}_et"], perm=[1, 0], name=f"{base}_transpose"),
                helper.make_node("DynamicQuantizeMatMul", [node.input[0], f"{base}_et", emb_s, "", bias],
                                 [node.output[0]], domain="com.microsoft", name=f"{base}_dqmm"),
            ]
            quantized.append(node.name)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and node.name not in keep
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        ):
            # y = A @ B(^T) + C on 2-D rows (heads on gathered or pooled rows)
            q, s = per_column(node.input[1], transposed=bool(attrs.get("transB", 0)))
            bias = node.input[2] if len(node.input) > 2 else ""
            base = unique(node.name.strip("/").replace("/", "_") or "gemm")
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], q, s, "", bias], [node.output[0]], domain="com.microsoft", name=f"{base}_dqmm"))
            quantized.append(node.name)
            continue
        if node.name in fused_adds:
            continue  # its bias went into the DynamicQuantizeMatMul above it
        if node.name in packs:
            members = packs[node.name]
            if node.name != members[0].name:
                continue  # produced by the first member's packed MatMul
            nodes += _matmul(members)
            continue
        nodes.append(node)

    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))
    return {
        "method": "dynamic INT8, per-column symmetric weights, position 0 quantized apart",
        "weights": f"int8 symmetric, |q| <= {qmax}",
        "built_for": target,
        "activations": "uint8 asymmetric per tensor, at run time (position 0 on its own)" if split_first else "uint8 asymmetric per tensor, at run time",
        "embeddings": "int8 per row" + (", the word table shared with the MLM projection" if emb_q is not None else "") if tables else None,
        "quantized_nodes": len(quantized),
        "split_first_nodes": len(split),
        "packed_matmuls": len({group[0].name for group in packs.values() if len(group) > 1}),
        "fused_biases": len(fused_adds),
        "fp32_nodes": sorted(keep),
    }
