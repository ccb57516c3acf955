"""The benchmark harness runs end to end on a tiny model and writes well-formed results.

Numbers are not judged here (benchmarks are not timed tests); only that every figure exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every contender in fresh processes
def test_harness_on_a_tiny_model(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.__main__ import main

    out = tmp_path / "out"
    keys = ["torch-fp32", "flare-fp32", "flare-int8", "ort-dynamic", "nncf-throughput", "flare-openvino"]
    args = ["--model", str(tiny_checkpoint), "--contenders", *keys,
            "--texts", "40", "--latency-texts", "10", "--repeats", "1", "--cold", "1", "--batch", "8",
            "--threads", "1", "--out", str(out), "--work", str(tmp_path / "work"), "--no-real-weights"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    flags = open("/proc/cpuinfo", encoding="ascii").read().split()
    assert results["machine"]["cpu"] and all((f in flags) == on for f, on in results["machine"]["isa"].items())
    assert [s["task"] for s in results["sections"]] == ["fill-mask", "embed"]
    for section in results["sections"]:
        assert set(section["rows"]) == set(keys)
        assert section["ceiling"]["int8_gemm_gops"] > 1 and section["ceiling"]["tokens_per_s"] > 0
        for key, row in section["rows"].items():
            assert row["latency"]["p50_ms"] > 0 and row["latency"]["n"] == 10
            assert row["throughput"]["tokens_per_s"] > 0 and len(row["throughput"]["runs"]) == 1
            assert row["throughput"]["fraction_of_int8_ceiling"] > 0
            assert row["peak_rss_mb"] > 10 and row["cold_start_s"] > 0
        base = section["rows"]["torch-fp32"]["throughput"]["runs"]
        for row in section["rows"].values():  # ratios are taken pass by pass against PyTorch
            ratios = [r / b for r, b in zip(row["throughput"]["runs"], base)]
            assert row["throughput"]["speedup_vs_baseline"] == pytest.approx(sorted(ratios)[len(ratios) // 2])
        fid = section["rows"]["flare-fp32"]["fidelity"]
        assert fid.get("top1_agreement", fid.get("cosine_mean")) > 0.99
    table = (out / "results.md").read_text()
    assert "| flare-onnx INT8 |" in table and "Machine:" in table and "INT8 ceiling on this machine" in table
    assert "| OpenVINO + NNCF INT8, THROUGHPUT hint |" in table
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["footprint"]["runtime_mb"] < results["footprint"]["torch_mb"]


def test_tagging_metric_helpers(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.tagging import entity_prf, first_token_labels, macro_prf, read_conll_ner, read_conllu, split

    conllu = tmp_path / "x.conllu"
    conllu.write_text(
        "# text = Della casa.\n1-2\tDella\t_\t_\t_\t_\t_\t_\t_\t_\n1\tDi\tdi\tADP\t_\t_\t_\t_\t_\t_\n"
        "2\tla\til\tDET\t_\t_\t_\t_\t_\t_\n3\tcasa\tcasa\tNOUN\t_\t_\t_\t_\t_\t_\n4\t.\t.\tPUNCT\t_\t_\t_\t_\t_\t_\n\n"
    )
    (text, spans, tags), = read_conllu(conllu)
    assert text == "Di la casa ." and [text[a:b] for a, b in spans] == ["Di", "la", "casa", "."]
    assert tags == ["ADP", "DET", "NOUN", "PUNCT"]
    m = macro_prf(["A", "A", "B", "C"], ["A", "B", "B", "C"], ["A", "B", "C"])
    assert m["accuracy"] == 0.75
    assert m["precision"] == pytest.approx((1 + 0.5 + 1) / 3) and m["recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    ner = tmp_path / "x.conll"
    ner.write_text("0\tMario\tB-PER\n1\tvive\tO\n2\ta\tO\n3\tSan\tB-LOC\n4\tSevero\tI-LOC\n\n0\tCiao\tO\n\n")
    first, second = read_conll_ner(ner)
    assert first[0] == "Mario vive a San Severo" and first[2][3:] == ["B-LOC", "I-LOC"] and second[2] == ["O"]
    train, test = split([first, second] * 5, 0.2, seed=0)
    assert len(train) == 8 and len(test) == 2
    # the first token of each word is labelled, even when its span starts on the space before it
    assert first_token_labels([(0, 0), (0, 3), (3, 5), (5, 10), (0, 0)], [(0, 5), (6, 10)], [1, 2]) == [-100, 1, -100, 2, -100]
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    e = entity_prf(gold, [["B-PER", "O", "O", "B-LOC"]])
    assert e["entity_precision"] == 0.5 and e["entity_recall"] == 0.5  # a span cut short is wrong
    assert entity_prf(gold, [["B-PER", "I-PER", "X", "B-LOC"]])["entity_f1"] == 1.0


def test_int8_probe_smoothing_is_exact_in_fp32_and_static_scales_are_batch_invariant(
        tiny_feature_bundle, sentences, tmp_path, monkeypatch):
    """The probe's two graph rewrites do what it claims: SmoothQuant's factors moved into the
    weights (a Mul, or folded into V) leave the FP32 answers unchanged, and fixed activation
    scales make a text's INT8 vector the same alone and beside a long text."""
    import numpy as np
    import onnxruntime as ort

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.int8_probe import _calibration_feeds, _session_feeds, smooth, to_static

    manifest = json.loads((tiny_feature_bundle / "manifest.json").read_text())
    fp32 = tiny_feature_bundle / manifest["graphs"]["fp32"]["file"]
    int8 = tiny_feature_bundle / manifest["graphs"]["int8"]["file"]
    feeds = _calibration_feeds(tiny_feature_bundle, sentences[:24], batch=8)
    notes = smooth(fp32, tmp_path / "smooth.onnx", feeds, 0.5)
    assert notes["mul_nodes"] > 0 and notes["folded_into_value"] > 0

    def run(path, feed):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, _session_feeds(session, feed))[0]

    for feed in feeds[:2]:
        want, got = run(fp32, feed), run(tmp_path / "smooth.onnx", feed)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))

    from flare_onnx_export.quantize import quantize_int8

    per_tensor = tmp_path / "per-tensor.onnx"  # the 0.2 recipe, which the probe's routes start from
    quantize_int8(fp32, per_tensor)
    to_static(per_tensor, tmp_path / "static.onnx", feeds, 1.0)
    alone = _calibration_feeds(tiny_feature_bundle, [sentences[0]])[0]
    batched = _calibration_feeds(tiny_feature_bundle, [sentences[0], " ".join(sentences[1:6])], batch=2)[0]
    n = int(alone["attention_mask"].sum())
    for path, invariant in ((tmp_path / "static.onnx", True), (per_tensor, False), (int8, True)):
        a, b = run(path, alone)[0, :n], run(path, batched)[0, :n]
        assert np.allclose(a, b, atol=1e-5) == invariant, path.name


def test_int8_probe_per_row_variants_are_batch_invariant_and_asymmetric_rows_are_closer(
    tiny_feature_bundle, sentences, tmp_path, monkeypatch
):
    """Per-row activations with asymmetric rows, or with GELU's output shifted to [0, max]
    (its constant folded into the next bias), keep a text's numbers independent of its
    batch-mates, and asymmetric rows land closer to FP32 than symmetric ones."""
    import numpy as np
    import onnxruntime as ort

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.int8_probe import _calibration_feeds, _session_feeds, per_row

    fp32 = (
        tiny_feature_bundle / json.loads((tiny_feature_bundle / "manifest.json").read_text())["graphs"]["fp32"]["file"]
    )
    graphs = {
        "sym": per_row(fp32, tmp_path / "sym.onnx", 127, 127),
        "asym": per_row(fp32, tmp_path / "asym.onnx", 127, 127, asym=True),
        "gelu": per_row(fp32, tmp_path / "gelu.onnx", 127, 127, gelu_shift=True),
    }
    assert graphs["gelu"]["gelu_shifted"] > 0 and graphs["sym"]["gelu_shifted"] == 0

    def run(path, feed):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, _session_feeds(session, feed))[0]

    feeds = _calibration_feeds(tiny_feature_bundle, sentences[:32], batch=16)
    keep = [f["attention_mask"].astype(bool) for f in feeds]
    want = np.concatenate([run(fp32, f)[k] for f, k in zip(feeds, keep)])
    error = {
        name: float(
            np.abs(np.concatenate([run(tmp_path / f"{name}.onnx", f)[k] for f, k in zip(feeds, keep)]) - want).mean()
        )
        for name in graphs
    }
    assert error["asym"] < error["sym"] and error["gelu"] < 0.05 * float(np.abs(want).mean()), error
    alone = _calibration_feeds(tiny_feature_bundle, [sentences[0]])[0]
    batched = _calibration_feeds(tiny_feature_bundle, [sentences[0], " ".join(sentences[1:6])], batch=2)[0]
    n = int(alone["attention_mask"].sum())
    for name in graphs:
        a, b = run(tmp_path / f"{name}.onnx", alone)[0, :n], run(tmp_path / f"{name}.onnx", batched)[0, :n]
        assert np.allclose(a, b, atol=1e-5), name


def test_row_kernels_forms_all_compute_the_same_matmul(monkeypatch):
    """benchmarks.row_kernels times the forms of one MatMul + bias: each must compute it (to
    INT8's error), or the timing compares different work."""
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.row_kernels import _session, forms

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((128, 64)) * 0.05).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((16, 128)).astype(np.float32)
    want = x @ w + b
    made = forms(w, b, float(np.abs(x).max()))
    assert {"fp32", "dqmm", "per-row", "per-row-minmax", "per-row-ascale", "static-mul", "static-tensor",
            "static-channel", "nbits-b32", "nbits-b128"} <= set(made)  # fmt: skip
    for name, (nodes, inits) in made.items():
        if name in ("per-row-fused-bias", "per-row-gemm-only"):  # lower bounds: passes left out on purpose
            continue
        got = _session(nodes, inits, 128, 64, 1).run(None, {"x": x})[0]
        assert np.abs(got - want).max() < (1e-4 if name == "fp32" else 0.05), name


def test_epilogue_probe_fusions_keep_the_per_row_graphs_numbers(tiny_checkpoint, sentences, tmp_path, monkeypatch):
    """benchmarks.epilogue_probe's rewrite (BiasGelu, SkipLayerNormalization, no Abs) is one of
    each kind per place and computes what the per-row graph computes, or its timing means nothing."""
    import numpy as np
    import onnxruntime as ort

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.epilogue_probe import fuse_epilogues
    from benchmarks.int8_probe import _calibration_feeds, _session_feeds
    from flare_onnx_export import export_bundle

    bundle = export_bundle(str(tiny_checkpoint), tmp_path / "rows", task="feature-extraction", activations="per-row",
                           log=lambda *_: None)  # fmt: skip
    made = fuse_epilogues(bundle / "model.int8.onnx", tmp_path / "fused.onnx")
    # 2 layers: the FFN's bias is inside its GEMM now (no Add before GELU to fuse), and only the
    # attention output's rows still take an Abs (GELU's rows are one-sided, LayerNorm's static)
    assert made == {"BiasGelu": 0, "SkipLayerNormalization": 4, "ReduceMin": 2}, made
    rows, fused = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                   for p in (bundle / "model.int8.onnx", tmp_path / "fused.onnx"))  # fmt: skip
    for feed in _calibration_feeds(bundle, sentences[:16], batch=8):
        want = rows.run(None, _session_feeds(rows, feed))[0]
        got = fused.run(None, _session_feeds(fused, feed))[0]
        # a fused op rounds its floats in another order; where that moves a value across a
        # quantization step's edge, one INT8 code changes, and every later output of that token
        # moves by about that step: a few tokens may, a wrong rewrite moves them all
        diff, scale = np.abs(got - want), max(1.0, float(np.abs(want).max()))
        moved = (diff.max(axis=-1) > 1e-4 * scale).mean()
        assert moved <= 0.02 and diff.max() <= 1e-2 * scale, (moved, diff.max() / scale)


def test_integrations_benchmark_on_tiny_bundles(tiny_tagger, tiny_feature_bundle, tmp_path):
    """benchmarks.integrations runs end to end (a few texts, one round) and its install sizes
    count what each extra adds over the runtime."""
    pytest.importorskip("spacy")
    pytest.importorskip("chromadb")
    from benchmarks import integrations

    out = tmp_path / "integrations.json"
    args = ["--tagger", str(tiny_tagger), "--embedder", str(tiny_feature_bundle), "-n", "40", "--rounds", "1"]
    assert integrations.main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["texts"] == 40 and all(v > 0 for v in result["seconds"].values())
    sizes = result["install"]
    assert sizes["runtime_mb"] > 0 and all(sizes[e]["mb"] > 0 and sizes[e]["distributions"] > 0 for e in integrations.EXTRAS)
    assert "spaCy `nlp.pipe`" in integrations.render(result)


def test_bias_probe_splits_the_error_and_runs_on_a_bundle(tiny_feature_bundle, sentences, tmp_path, monkeypatch):
    """benchmarks.bias_probe: an error that is one shared vector is all mean, one that averages
    to zero has none; on a bundle it writes both shares and fidelity before and after."""
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bias_probe

    rng = np.random.default_rng(0)
    shift = np.tile(rng.normal(size=8), (50, 1))
    assert bias_probe.mean_share(shift) == pytest.approx(1.0)
    noise = rng.normal(size=(50, 8))
    assert bias_probe.mean_share(np.concatenate([noise, -noise])) == pytest.approx(0.0, abs=1e-12)
    corpus = tmp_path / "held-out.txt"
    corpus.write_text("\n".join(sentences[-40:]), encoding="utf-8")
    out = tmp_path / "bias.json"
    assert bias_probe.main([str(tiny_feature_bundle), "--corpus", str(corpus), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    plain, corrected = result["held_out"], result["held_out_corrected"]
    assert result["texts"] == 40 and set(result["mean_share"]) == {"calibration", "held_out"}
    # INT8 against FP32, as the runtime embeds them; the calibration's shift then taken off
    import flare_onnx
    from benchmarks.fusion_probe import _fidelity

    texts = sentences[-40:]
    want = flare_onnx.load(tiny_feature_bundle, precision="fp32").embed(texts)
    assert plain == pytest.approx(_fidelity(flare_onnx.load(tiny_feature_bundle).embed(texts), want), abs=1e-7)
    assert corrected["cosine_mean"] != plain["cosine_mean"]


def test_activations_benchmark_times_bundles_side_by_side_with_a_busy_core(
    tiny_checkpoint, tiny_feature_bundle, sentences, tmp_path, monkeypatch
):
    """benchmarks.activations compares bundles against the first one's FP32 graph, with a busy
    core when asked, and measures the rewritten text under --stress."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import activations
    from flare_onnx_export import export_bundle

    old = export_bundle(str(tiny_checkpoint), tmp_path / "old", task="feature-extraction", activations="per-tensor",
                        weight_rounding="nearest", log=lambda *_: None)  # fmt: skip
    corpus = tmp_path / "held-out.txt"
    corpus.write_text("\n".join(sentences[-30:]), encoding="utf-8")
    out = tmp_path / "activations.json"
    args = [str(old), str(tiny_feature_bundle), "--corpus", str(corpus), "--passes", "2", "--busy", "--stress", "--workload", "interactive"]
    assert activations.main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["busy"] is True and result["workload"] == "interactive" and set(result["rows"]) == {"old", tiny_feature_bundle.name}
    assert all(r["tokens_per_s"] > 0 and 0.5 < r["cosine_mean"] <= 1 + 1e-6 for r in result["rows"].values())
    assert set(result["stress"]) == set(activations.stressed(sentences[:3]))


def test_rows_probe_moves_the_chosen_layernorm_outputs_to_run_time_rows(tiny_feature_bundle, sentences, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """benchmarks.rows_probe: ``--rows ffn`` leaves Q/K/V's fixed scales and takes the FFN
    input's away, ``--rows all`` takes every one, and the bundle it writes embeds close to FP32;
    ``--clip`` scales the fixed scales that remain."""
    import onnx

    import flare_onnx

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import rows_probe

    def fixed(bundle: Path) -> int:
        return sum(n.name.endswith("_static_mm") for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node)

    before = fixed(tiny_feature_bundle)
    assert before == 4  # 2 layers: Q/K/V and FFN in
    for rows, left in (("ffn", 2), ("all", 0)):
        assert rows_probe.main([str(tiny_feature_bundle), str(tmp_path / rows), "--rows", rows]) == 0
        assert fixed(tmp_path / rows) == left
    want = flare_onnx.load(tiny_feature_bundle, precision="fp32").embed(sentences[:20])
    got = flare_onnx.load(tmp_path / "all").embed(sentences[:20])
    assert float((want * got).sum(axis=1).min()) > 0.99

    def scales(bundle: Path) -> dict[str, float]:
        graph = onnx.load(str(bundle / "model.int8.onnx")).graph
        return {t.name: float(onnx.numpy_helper.to_array(t)) for t in graph.initializer
                if t.name.endswith("_static_scale")}  # fmt: skip

    # --clip: the same fixed scales, at that share of the calibration peak
    assert rows_probe.main([str(tiny_feature_bundle), str(tmp_path / "clip"), "--rows", "none", "--clip", "0.5"]) == 0
    default, clipped = scales(tiny_feature_bundle), scales(tmp_path / "clip")
    assert len(default) == 4 and clipped == pytest.approx({k: v / 2 for k, v in default.items()}, rel=1e-6)
