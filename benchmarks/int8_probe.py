"""Probe of INT8 recipes that keep the fast kernels (issue #36):
``python -m benchmarks.int8_probe BUNDLE [BUNDLE ...] --corpus FILE``.

Every route but the ``u8u8`` ones keeps onnxruntime's u8s8 GEMMs (``DynamicQuantizeMatMul`` or
``MatMulIntegerToFloat``); only the numbers fed to them change:

* ``fast`` — the bundle's own INT8 graph (per-column weights, activations per tensor at run
  time, position 0 quantized apart);
* ``plain-dynamic`` — onnxruntime's ``quantize_dynamic`` of the FP32 graph (per-tensor
  activations, per-column weights: the recipe optimum's default gives), the fixed point;
* ``plain-u8u8`` — the same with unsigned 8-bit weights (per-column zero points): onnxruntime's
  u8u8 GEMM multiplies in 16 bits and never saturates, so weights keep all 8 bits on AVX2 — the
  lead from LiteRT's probe (benchmarks/litert_probe.py), whose full-8-bit kernel was the more
  faithful; the fast u8s8 kernel is not kept here, and its speed is what this route measures;
* ``per-row`` — activations quantized per row (per token) at run time, no split (:func:`per_row`):
  7-bit weights on u8s8; ``per-row-a7w8`` 7-bit activations and 8-bit weights on u8s8;
  ``per-row-u8u8`` 8-bit weights stored unsigned for the u8u8 kernel (no saturation, slower);
  ``per-row-w8`` 8-bit weights on u8s8 (VNNI/AMX CPUs; on AVX2 its pair sums saturate); with
  ``-asym`` each row's own ``[min, max]`` and zero point, ``-gelu`` GELU's output shifted to
  ``[0, max]`` (asymmetric rows where inputs are one-sided, at symmetric rows' cost), ``-gptq``
  the weights rounded by GPTQ against the calibration activations (:func:`gptq`); named only;
* ``w8-only``, ``w8-gptq-only`` (``w7-…``) — the FP32 graph with rounded weights, activations
  exact: the fidelity floor of a weight rounding (named only);
* ``sq<α>`` — SmoothQuant (Xiao et al., 2023): each MatMul input's per-channel range moved
  into its weight rows by ``s_j = max|x_j|^α / max|W_j|^(1-α)`` — a ``Mul`` by ``1/s`` before
  the MatMul, folded into the value projection where the input is attention's context — then
  flare-onnx's INT8 pass without the position-0 split; ``sq<α>-per-row[-w8][-asym]`` the
  smoothed graph with per-row activations instead (the smoothing ``Mul`` stays FP32; named only);
* ``static…`` — activations quantized with scales fixed at export (calibrated on the
  exporter's own Italian sample): ``QuantizeLinear`` + ``MatMulIntegerToFloat``, one pass less
  than run-time scales, and a text's numbers no longer depend on its batch-mates.

For each: fidelity to the bundle's FP32 graph on the corpus (mean-pooled cosine, nearest
neighbour), batch invariance (each text alone against inside length-sorted batches of 32:
worst cosine), bulk tokens/s in interleaved passes (× fast) and batch-1 p50. Calibration never
sees the corpus. Export-time only (needs onnx).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from flare_onnx_export.quantize import GELU_SHIFT, reads_gelu
from flare_onnx_export.rounding import gptq

from .fusion_probe import _fidelity, _plain, _with_graph
from .machine import describe


def _calibration_feeds(bundle: Path, texts: list[str], batch: int = 16) -> list[dict[str, np.ndarray]]:
    """The graph's inputs for ``texts`` as the runtime builds them (its tokenizer, windows, padding)."""
    import flare_onnx
    from flare_onnx.engine.batching import pad_batch

    model = flare_onnx.load(bundle, precision="fp32", threads=2)
    encoder = model.tokenizer
    windows = encoder.windows(encoder.encode(texts), sliding=False, stride=0)
    feeds = []
    for i in range(0, len(windows), batch):
        ids, mask = pad_batch([w.ids for w in windows[i : i + batch]], encoder.special.pad_id)
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def _session_feeds(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    out = {k: v for k, v in feed.items() if k in names}
    if "token_type_ids" in names:
        out["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return out


def _activations(path: Path, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """The values of ``tensors`` over the calibration feeds, pad positions dropped (rows of the last axis)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seen: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds:
        values = session.run(tensors, _session_feeds(session, feed))
        keep = feed["attention_mask"].astype(bool)
        for name, v in zip(tensors, values):
            seen[name].append(v[keep] if v.ndim == 3 and v.shape[:2] == keep.shape else v.reshape(-1, v.shape[-1]))
    return seen


def _matmuls(model: Any) -> dict[str, list[Any]]:
    """Weight MatMuls on 3-D activations, grouped by the activation they read."""
    inits = {t.name for t in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            groups.setdefault(n.input[0], []).append(n)
    return groups


def smooth(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]], alpha: float) -> dict[str, Any]:
    """SmoothQuant of an FP32 graph: ``x W = (x / s) (s W)`` for every weight MatMul group."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    inits = {t.name: t for t in model.graph.initializer}
    groups = _matmuls(model)
    acts = _activations(fp32, list(groups), feeds)
    producers = {o: n for n in model.graph.node for o in n.output}
    folded, muls = 0, 0
    new_nodes: dict[str, Any] = {}
    for x, members in groups.items():
        a = np.abs(np.concatenate(acts[x])).max(axis=0)
        ws = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float32) for m in members]
        w = np.max([np.abs(v).max(axis=1) for v in ws], axis=0)
        s = np.clip(a, 1e-5, None) ** alpha / np.clip(w, 1e-5, None) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        for m, v in zip(members, ws):
            t = numpy_helper.from_array((v * s[:, None]).astype(np.float32), m.input[1] + "_smoothed")
            model.graph.initializer.append(t)
            inits[t.name] = t
            m.input[1] = t.name
        if _fold_into_value(model, producers, inits, x, s):
            folded += 1
            continue
        name = x + "_smooth"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), name + "_inv"))
        new_nodes[x] = onnx.helper.make_node("Mul", [x, name + "_inv"], [name], name=name.strip("/") + "_mul")
        for m in members:
            m.input[0] = name
        muls += 1
    nodes = []
    for n in model.graph.node:
        nodes.append(n)
        nodes += [new_nodes[o] for o in n.output if o in new_nodes]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return {"alpha": alpha, "mul_nodes": muls, "folded_into_value": folded}


def _fold_into_value(model: Any, producers: dict[str, Any], inits: dict[str, Any], x: str, s: np.ndarray) -> bool:
    """Attention's context is ``softmax · V``: dividing V's output columns by ``s`` divides the
    context's channels by ``s`` exactly (heads concatenated in column order), so no Mul runs."""
    from onnx import numpy_helper

    node, path = producers.get(x), []
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        path.append(node)
        node = producers.get(node.input[0])
    if node is None or node.op_type != "MatMul" or node.input[1] in inits:
        return False  # not softmax(QK^T) @ V
    v = node.input[1]
    while v in producers and producers[v].op_type in ("Reshape", "Transpose"):
        v = producers[v].input[0]
    add = producers.get(v)
    if add is None or add.op_type != "Add":
        return False
    mm = next((producers[i] for i in add.input if i in producers and producers[i].op_type == "MatMul"), None)
    # the exporter shares identical tensors (a model's zero biases) through Identity nodes
    source = {
        i: producers[i].input[0] if i in producers and producers[i].op_type == "Identity" else i for i in add.input
    }
    bias = next((i for i in add.input if source[i] in inits), None)
    if mm is None or bias is None or mm.input[1] not in inits:
        return False
    wv = numpy_helper.to_array(inits[mm.input[1]]).astype(np.float32)
    bv = numpy_helper.to_array(inits[source[bias]]).astype(np.float32)
    if wv.shape[1] != s.size:
        return False
    for old, new, value in ((mm, 1, wv / s[None, :]), (add, None, bv / s)):
        name = (mm.input[1] if new else bias) + "_unsmoothed"
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        if new:
            old.input[1] = name
        else:
            old.input[list(old.input).index(bias)] = name
    return True


def to_static(
    int8: Path, out: Path, feeds: list[dict[str, np.ndarray]], clip: float, levels: int = 255
) -> dict[str, Any]:
    """Every ``DynamicQuantizeMatMul`` becomes ``QuantizeLinear`` with a scale fixed from the
    calibration range (``clip``: the quantile of |x| kept, 1.0 = min/max) + ``MatMulIntegerToFloat``;
    ``levels`` 127 keeps activations to 7 bits (so AVX2's 16-bit pair sums cannot saturate with
    full 8-bit weights)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(int8))
    dq = [n for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    acts = _activations(int8, sorted({n.input[0] for n in dq}), feeds)
    nodes = []
    for n in model.graph.node:
        if n.op_type != "DynamicQuantizeMatMul":
            nodes.append(n)
            continue
        v = np.concatenate([a.ravel() for a in acts[n.input[0]]])
        lo, hi = (float(v.min()), float(v.max())) if clip >= 1 else tuple(np.quantile(v, [1 - clip, clip]))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-8) / levels
        zp = int(np.clip(np.rint(-lo / scale), 0, levels))
        base = n.name + "_static"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), base + "_scale"),
                numpy_helper.from_array(np.array(zp, np.uint8), base + "_zp"),
            ]
        )
        inputs = list(n.input) + [""] * (5 - len(n.input))
        nodes.append(
            helper.make_node(
                "QuantizeLinear", [inputs[0], base + "_scale", base + "_zp"], [base + "_q"], name=base + "_quantize"
            )
        )
        nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [base + "_q", inputs[1], base + "_scale", inputs[2], base + "_zp", inputs[3], inputs[4]],
                list(n.output),
                domain="com.microsoft",
                name=base + "_mm",
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return {"static_matmuls": len(dq), "clip": clip, "levels": levels}


def rounded_weights(
    fp32: Path, feeds: list[dict[str, np.ndarray]] | None, levels: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every constant MatMul weight of ``fp32`` rounded to ``levels``: by GPTQ against the
    calibration activations when ``feeds`` is given, to nearest otherwise."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    inits = {t.name: t for t in model.graph.initializer}
    groups = {x: [m for m in ms if len(inits[m.input[1]].dims) == 2] for x, ms in _matmuls(model).items()}
    groups = {x: ms for x, ms in groups.items() if ms}
    acts = _activations(fp32, list(groups), feeds) if feeds else {}
    out = {}
    for x, members in groups.items():
        hessian = None
        if feeds:
            xs = np.concatenate(acts[x]).astype(np.float64)
            hessian = xs.T @ xs
        for m in members:
            w = numpy_helper.to_array(inits[m.input[1]]).astype(np.float32)
            if hessian is None:
                scale = np.maximum(np.abs(w).max(0), 1e-12) / levels
                out[m.input[1]] = (np.clip(np.rint(w / scale), -levels, levels).astype(np.int8), scale)
            else:
                out[m.input[1]] = gptq(w, hessian, levels)
    return out


def fake_weights(fp32: Path, out: Path, rounded: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The FP32 graph with its MatMul weights replaced by their rounded values (FP32 compute):
    the fidelity floor of a weight rounding, activations left exact."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    for i, t in enumerate(model.graph.initializer):
        if t.name in rounded:
            q, scale = rounded[t.name]
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array((q * scale).astype(np.float32), t.name))
    onnx.save(model, str(out))
    return {"weights_rounded": len(rounded)}


def per_row(
    fp32: Path,
    out: Path,
    act_levels: int = 127,
    weight_levels: int = 63,
    u8u8: bool = False,
    asym: bool = False,
    rounded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    gelu_shift: bool = False,
) -> dict[str, Any]:
    """Every MatMul with a constant weight as u8s8 with activations quantized **per row** (per
    token) at run time: ``s_r = max|x_r| / act_levels``, ``QuantizeLinear`` along the rows (zero
    point 128), ``MatMulIntegerToFloat`` with the weights' per-column scales, then ``· s_r``.
    A token's numbers depend on that token only (batch invariant), and an outlier token (the
    ``<s>`` position) spoils no other row, with no split. ``weight_levels`` 63 keeps AVX2's
    ``vpmaddubsw`` pair sums from saturating with 8-bit activations (127 with ``act_levels`` 63);
    ``u8u8`` stores 8-bit weights as unsigned (zero point 128) for onnxruntime's u8u8 kernel,
    which widens to 16 bits and never saturates.

    ``asym``: each row's range ``[min, max]`` (zero included) is mapped onto 0…255 with a zero
    point of its own, ``x ≈ s_r (q - z_r)``; the kernel runs with zero point 0 and the row's
    term is taken off after it, ``y = s_r (q W - z_r Σ_k W_k)`` — the bit that symmetric scales
    waste on one-sided inputs (GELU's output, ≥ -0.17) is kept. ``rounded``: the weights'
    integers and scales (:func:`rounded_weights`, e.g. by GPTQ) instead of rounding to nearest.

    ``gelu_shift``: a MatMul reading GELU's output (FFN out) quantizes ``x + 0.17`` instead,
    which GELU's minimum (-0.16997) keeps ≥ 0: one scale per row over ``[0, max]`` with zero
    point 0 — asymmetric rows' bit at symmetric rows' cost (no ``Abs``; the constant
    ``-0.17 Σ_k W_k`` goes into the bias the MatMul's consumer already adds)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, changed, shifts = [], 0, 0
    const = lambda name, value: model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))  # noqa: E731
    shared = {"pr/k_minus1": np.array([-1], np.int64), "pr/zero": np.array([0], np.int64)}
    shared |= {"pr/zp": np.array(128, np.uint8), "pr/zp0": np.array(0, np.uint8), "pr/one": np.array(1.0, np.float32)}
    for name, value in (("eps", 1e-12), ("zero_f", 0.0), ("top", 255.0), ("inv_levels", 1.0 / act_levels),
                        ("inv_255", 1.0 / 255), ("gelu_min", GELU_SHIFT)):  # fmt: skip
        shared[f"pr/{name}"] = np.array(value, np.float32)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in shared.items())
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        shifted = gelu_shift and reads_gelu(producers, node.input[0])
        weight = numpy_helper.to_array(w).astype(np.float32)
        if rounded is not None and w.name in rounded:
            q, wscale = rounded[w.name]
        else:
            wscale = np.maximum(np.abs(weight).max(0), 1e-12) / weight_levels
            q = np.clip(np.round(weight / wscale), -weight_levels, weight_levels)
        p = f"pr/{changed}"
        const(f"{p}/w", (q.astype(np.int16) + 128).astype(np.uint8) if u8u8 else q.astype(np.int8))
        const(f"{p}/ws", wscale.astype(np.float32))
        const(f"{p}/shape2", np.array([-1, weight.shape[0]], np.int64))
        x, y = node.input[0], node.output[0]
        nodes += [
            helper.make_node("Shape", [x], [f"{p}/xshape"]),
            helper.make_node("Reshape", [x, f"{p}/shape2"], [f"{p}/x2"]),
        ]
        if shifted:
            _shift_bias(model, inits, producers, consumers, y, -GELU_SHIFT * wscale * q.astype(np.float32).sum(0))
            shifts += 1
        elif asym:
            const(f"{p}/colsum", (wscale * q.astype(np.float32).sum(0)).astype(np.float32))
        nodes += _row_nodes("shifted" if shifted else "asym" if asym else "sym", p, u8u8)
        nodes += [
            helper.make_node("Slice", [f"{p}/xshape", "pr/zero", "pr/k_minus1"], [f"{p}/lead"]),
            helper.make_node("Concat", [f"{p}/lead", f"{p}/n"], [f"{p}/yshape"], axis=0),
            helper.make_node("Reshape", [f"{p}/y2s", f"{p}/yshape"], [y]),
        ]
        const(f"{p}/n", np.array([weight.shape[1]], np.int64))
        changed += 1
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(out))
    return {
        "matmuls_per_row": changed,
        "act_levels": 255 if asym else act_levels,
        "weight_levels": weight_levels,
        "u8u8": u8u8,
        "asym": asym,
        "gptq": rounded is not None,
        "gelu_shifted": shifts,
    }


def _row_nodes(kind: str, p: str, u8u8: bool) -> list[Any]:
    """The nodes from ``{p}/x2`` (rows) to ``{p}/y2s`` (the rows' output) for one MatMul,
    quantizing each row ``sym``-metrically, ``asym``-metrically, or ``shifted`` by GELU's minimum."""
    import onnx
    from onnx import helper

    def matmul(zero_point: str) -> Any:
        return helper.make_node(
            "MatMulIntegerToFloat",
            [f"{p}/q", f"{p}/w", "pr/one", f"{p}/ws", zero_point] + (["pr/zp"] if u8u8 else []),
            [f"{p}/y2"],
            domain="com.microsoft",
        )

    scaled = [
        helper.make_node("Unsqueeze", [f"{p}/s", "pr/k_minus1"], [f"{p}/s2"]),
        helper.make_node("Mul", [f"{p}/y2z" if kind == "asym" else f"{p}/y2", f"{p}/s2"], [f"{p}/y2s"]),
    ]
    if kind == "shifted":
        return [
            helper.make_node("Add", [f"{p}/x2", "pr/gelu_min"], [f"{p}/xs"]),
            helper.make_node("ReduceMax", [f"{p}/xs"], [f"{p}/max"], axes=[1], keepdims=0),
            helper.make_node("Max", [f"{p}/max", "pr/eps"], [f"{p}/max_eps"]),
            helper.make_node("Mul", [f"{p}/max_eps", "pr/inv_255"], [f"{p}/s"]),
            helper.make_node("QuantizeLinear", [f"{p}/xs", f"{p}/s"], [f"{p}/q"], axis=0),
            matmul("pr/zp0"),
            *scaled,
        ]
    if kind == "asym":
        return [
            helper.make_node("ReduceMax", [f"{p}/x2"], [f"{p}/hi0"], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", [f"{p}/x2"], [f"{p}/lo0"], axes=[1], keepdims=0),
            helper.make_node("Max", [f"{p}/hi0", "pr/zero_f"], [f"{p}/hi"]),
            helper.make_node("Min", [f"{p}/lo0", "pr/zero_f"], [f"{p}/lo"]),
            helper.make_node("Sub", [f"{p}/hi", f"{p}/lo"], [f"{p}/range"]),
            helper.make_node("Max", [f"{p}/range", "pr/eps"], [f"{p}/range_eps"]),
            helper.make_node("Mul", [f"{p}/range_eps", "pr/inv_255"], [f"{p}/s"]),
            helper.make_node("Div", [f"{p}/lo", f"{p}/s"], [f"{p}/lo_s"]),
            helper.make_node("Neg", [f"{p}/lo_s"], [f"{p}/zf0"]),
            helper.make_node("Round", [f"{p}/zf0"], [f"{p}/zf1"]),
            helper.make_node("Clip", [f"{p}/zf1", "pr/zero_f", "pr/top"], [f"{p}/zf"]),
            helper.make_node("Cast", [f"{p}/zf"], [f"{p}/zps"], to=onnx.TensorProto.UINT8),
            helper.make_node("QuantizeLinear", [f"{p}/x2", f"{p}/s", f"{p}/zps"], [f"{p}/q"], axis=0),
            matmul("pr/zp0"),
            helper.make_node("Unsqueeze", [f"{p}/zf", "pr/k_minus1"], [f"{p}/z2"]),
            helper.make_node("Mul", [f"{p}/z2", f"{p}/colsum"], [f"{p}/zterm"]),
            helper.make_node("Sub", [f"{p}/y2", f"{p}/zterm"], [f"{p}/y2z"]),
            *scaled,
        ]
    return [
        helper.make_node("Abs", [f"{p}/x2"], [f"{p}/abs"]),
        helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/max"], axes=[1], keepdims=0),
        helper.make_node("Max", [f"{p}/max", "pr/eps"], [f"{p}/max_eps"]),
        helper.make_node("Mul", [f"{p}/max_eps", "pr/inv_levels"], [f"{p}/s"]),
        helper.make_node("Shape", [f"{p}/s"], [f"{p}/sshape"]),
        helper.make_node("Expand", ["pr/zp", f"{p}/sshape"], [f"{p}/zps"]),
        helper.make_node("QuantizeLinear", [f"{p}/x2", f"{p}/s", f"{p}/zps"], [f"{p}/q"], axis=0),
        matmul("pr/zp"),
        *scaled,
    ]


def _shift_bias(
    model: Any,
    inits: dict[str, Any],
    producers: dict[str, Any],
    consumers: dict[str, list[Any]],
    y: str,
    delta: np.ndarray,
) -> None:
    """Add ``delta`` to the bias that ``y``'s consumer adds, as a new initializer (the exporter
    shares identical biases through ``Identity`` nodes: the source's value is read)."""
    from onnx import numpy_helper

    source = lambda i: producers[i].input[0] if i in producers and producers[i].op_type == "Identity" else i  # noqa: E731
    users = consumers.get(y, [])
    add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
    bias = next((i for i in add.input if source(i) in inits), None) if add is not None else None
    if add is None or bias is None:
        raise ValueError(f"no bias Add after {y}")  # the probe's graphs all have one; a real pass would add a node
    value = numpy_helper.to_array(inits[source(bias)]).astype(np.float32) + delta
    name = f"{source(bias)}_shifted_{y}"
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    add.input[list(add.input).index(bias)] = name


def _invariance(model: Any, texts: list[str]) -> float:
    """The worst cosine between a text embedded alone and inside length-sorted batches of 32."""
    ordered = sorted(texts, key=len)
    batched = np.concatenate([model.embed(ordered[i : i + 32]) for i in range(0, len(ordered), 32)])
    alone = np.concatenate([model.embed([t]) for t in ordered])
    return float((batched * alone).sum(1).min())


def _speed(models: dict[str, Any], texts: list[str], tokens: int, passes: int, singles: int) -> dict[str, Any]:
    ordered = sorted(texts, key=len)
    batches = [ordered[i : i + 32] for i in range(0, len(ordered), 32)]
    rates: dict[str, list[float]] = {k: [] for k in models}
    p50: dict[str, list[float]] = {k: [] for k in models}
    for p in range(passes):  # interleaved, the order rotated each pass
        keys = list(models)[p % len(models) :] + list(models)[: p % len(models)]
        for key in keys:
            bulk, single = models[key]
            bulk.embed(batches[0])
            start = time.perf_counter()
            for batch in batches:
                bulk.embed(batch)
            rates[key].append(tokens / (time.perf_counter() - start))
            times = []
            for text in texts[:singles]:
                t0 = time.perf_counter()
                single.embed([text])
                times.append(time.perf_counter() - t0)
            p50[key].append(1e3 * statistics.median(times))
    base = rates["fast"]
    return {
        k: {
            "tokens_per_s": statistics.median(rates[k]),
            "vs_fast": statistics.median([r / b for r, b in zip(rates[k], base)]),
            "p50_ms": statistics.median(p50[k]),
        }
        for k in models
    }


# per-row variants: activation levels, weight levels, u8u8, asymmetric rows, GPTQ-rounded weights.
# ``-w8`` (8-bit weights on u8s8) is for VNNI/AMX CPUs: on AVX2 its pair sums saturate.
PER_ROW = {
    f"per-row{w}{a}{g}": (*levels, a == "-asym", g == "-gptq", a == "-gelu")
    for w, levels in (
        ("", (127, 63, False)),
        ("-a7w8", (63, 127, False)),
        ("-u8u8", (127, 127, True)),
        ("-w8", (127, 127, False)),
    )
    for a in ("", "-asym", "-gelu")
    for g in ("", "-gptq")
}
# routes run only when named with --routes (the rest run by default, as the recorded commands did)
NAMED_ONLY = (
    {r for r in PER_ROW if r not in ("per-row", "per-row-a7w8", "per-row-u8u8")}
    | {"w8-only", "w8-gptq-only", "w7-only", "w7-gptq-only"}
    | {f"sq{a}-per-row{t}" for a in (0.3, 0.5, 0.8) for t in ("", "-w8", "-w8-asym")}
)


def _per_row_routes(
    fp32: Path,
    feeds: list[dict[str, np.ndarray]],
    wanted: Any,
    work: Path,
    graphs: dict[str, Path],
    notes: dict[str, Any],
) -> None:
    """The per-row routes asked for, and the weight-rounding floors (FP32 compute)."""
    rounding: dict[tuple[int, bool], dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def rounded(levels: int, by_gptq: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if (levels, by_gptq) not in rounding:
            rounding[levels, by_gptq] = rounded_weights(fp32, feeds if by_gptq else None, levels)
        return rounding[levels, by_gptq]

    for route, (act, weight, u8u8, asym, by_gptq, shift) in PER_ROW.items():
        if wanted(route):
            extra = {"rounded": rounded(weight, True)} if by_gptq else {}
            notes[route] = per_row(fp32, work / f"{route}.onnx", act, weight, u8u8, asym, gelu_shift=shift, **extra)
            graphs[route] = work / f"{route}.onnx"
    for route, by_gptq in (("w8-only", False), ("w8-gptq-only", True), ("w7-only", False), ("w7-gptq-only", True)):
        if wanted(route):
            notes[route] = fake_weights(fp32, work / f"{route}.onnx", rounded(127 if "w8" in route else 63, by_gptq))
            graphs[route] = work / f"{route}.onnx"


def _build_routes(
    fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]], alphas: list[float], wanted: Any, work: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The graph of every route asked for (and only those), with what each rewrite did."""
    from flare_onnx_export.quantize import quantize_int8

    graphs: dict[str, Path] = {"fast": int8}
    notes: dict[str, Any] = {}
    if wanted("plain-dynamic"):
        _plain(fp32, work / "plain.onnx")
        graphs["plain-dynamic"] = work / "plain.onnx"
    _per_row_routes(fp32, feeds, wanted, work, graphs, notes)
    if wanted("plain-u8u8"):  # unsigned 8-bit weights: onnxruntime's u8u8 kernels widen to 16 bits, no saturation
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(work / "u8u8.onnx"), weight_type=QuantType.QUInt8, per_channel=True)
        graphs["plain-u8u8"] = work / "u8u8.onnx"
    if wanted("static-split"):
        notes["static-split"] = to_static(int8, work / "static-split.onnx", feeds, 1.0)
        graphs["static-split"] = work / "static-split.onnx"
    if wanted("static-split-a7w8") or wanted("static-split-w8"):
        quantize_int8(fp32, work / "w8.onnx", target="vnni")  # |q| <= 127 weights
        for route, levels in (("static-split-a7w8", 127), ("static-split-w8", 255)):
            if wanted(route):
                notes[route] = to_static(work / "w8.onnx", work / f"{route}.onnx", feeds, 1.0, levels=levels)
                graphs[route] = work / f"{route}.onnx"
    for alpha in alphas:
        _smoothed_routes(fp32, feeds, alpha, wanted, work, graphs, notes)
    return graphs, notes


def _smoothed_routes(
    fp32: Path,
    feeds: list[dict[str, np.ndarray]],
    alpha: float,
    wanted: Any,
    work: Path,
    graphs: dict[str, Path],
    notes: dict[str, Any],
) -> None:
    """SmoothQuant at ``alpha``, then run-time or static scales, with or without the split."""
    from flare_onnx_export.quantize import quantize_int8

    sq = f"sq{alpha}"
    tails = ("", "-split", "-static", "-static-nosplit", "-per-row", "-per-row-w8", "-per-row-w8-asym")
    routes = {f"{sq}{tail}": tail for tail in tails if wanted(f"{sq}{tail}")}
    if not routes:
        return
    smoothed = work / f"{sq}-fp32.onnx"
    factors = smooth(fp32, smoothed, feeds, alpha)
    for route, tail in routes.items():
        if tail.startswith("-per-row"):  # the smoothed graph's MatMuls per row (the smoothing Mul stays FP32)
            notes[route] = {
                **factors,
                **per_row(smoothed, work / f"{route}.onnx", 127, 127 if "w8" in tail else 63, asym="asym" in tail),
            }
            graphs[route] = work / f"{route}.onnx"
            continue
        quantize_int8(smoothed, work / f"{route}-dynamic.onnx", split_first=tail in ("-split", "-static"))
        graphs[route] = work / f"{route}-dynamic.onnx"
        notes[route] = dict(factors)
        if "static" in tail:
            notes[route].update(to_static(graphs[route], work / f"{route}.onnx", feeds, 1.0))
            graphs[route] = work / f"{route}.onnx"


def probe(bundle: Path, texts: list[str], calib: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import flare_onnx

    record = json.loads((bundle / "manifest.json").read_text())
    fp32 = bundle / record["graphs"]["fp32"]["file"]
    int8 = bundle / record["graphs"]["int8"]["file"]
    feeds = _calibration_feeds(bundle, calib)
    wanted = lambda route: route in args.routes if args.routes else route not in NAMED_ONLY  # noqa: E731
    graphs, notes = _build_routes(fp32, int8, feeds, args.alphas, wanted, work)
    bundles = {k: bundle if k == "fast" else _with_graph(bundle, g, work / f"b-{k}") for k, g in graphs.items()}
    reference = flare_onnx.load(bundle, precision="fp32", threads=2).embed(texts)
    models = {
        k: (
            flare_onnx.load(b, threads=2, workload="bulk", backend="onnxruntime"),
            flare_onnx.load(b, threads=2, backend="onnxruntime"),
        )
        for k, b in bundles.items()
    }
    tokens = sum(len(e.ids) + 2 for e in models["fast"][0].tokenizer.encode(texts))
    speed = _speed(models, texts, tokens, args.passes, args.singles)
    out: dict[str, Any] = {"bundle": str(bundle), "texts": len(texts), "routes": {}}
    for key, (bulk, single) in models.items():
        out["routes"][key] = {
            **_fidelity(bulk.embed(texts), reference),
            "alone_vs_batched_min": _invariance(single, texts[: args.invariance]),
            **speed[key],
            "size_mb": graphs[key].stat().st_size / 1e6,
            "notes": notes.get(key, {}),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from flare_onnx_export import italian_sentences, read_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="feature-extraction bundles with an FP32 and an INT8 graph")
    parser.add_argument("--corpus", required=True, help="held-out Italian text (one sentence per line, or CoNLL-U)")
    parser.add_argument("--prefix", default="", help="put before every text (e5: 'query: ')")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--invariance", type=int, default=200, help="texts embedded alone and batched")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.8])
    parser.add_argument("--routes", nargs="*", help="only these routes (beside fast)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    texts = [args.prefix + t for t in texts]
    calib = [args.prefix + t for t in italian_sentences()]
    result: dict[str, Any] = {"machine": describe(), "corpus": Path(args.corpus).name, "runs": []}
    with tempfile.TemporaryDirectory(prefix="flare-int8-") as tmp:
        for i, bundle in enumerate(args.bundles):
            work = Path(tmp) / str(i)
            work.mkdir()
            run = probe(Path(bundle), texts, calib, args, work)
            result["runs"].append(run)
            print(f"{bundle}: {len(texts)} texts of {Path(args.corpus).name}, calibrated on the shipped sample")
            print(
                "| route | cosine mean / min | NN = FP32 | alone vs batched (min) | tokens/s (× fast) | batch-1 p50 |"
            )
            print("|---|---|---|---|---|---|")
            for key, r in run["routes"].items():
                print(f"| {key} | {r['cosine_mean']:.5f} / {r['cosine_min']:.5f} | {r['nn']:.1%} "
                      f"| {r['alone_vs_batched_min']:.6f} | {r['tokens_per_s']:,.0f} ({r['vs_fast']:.2f}×) "
                      f"| {r['p50_ms']:.2f} ms |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
