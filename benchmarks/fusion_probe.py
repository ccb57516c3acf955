"""Probe of the cheapest fusing route (issue #37): onnxruntime's transformer optimizer, then
dynamic quantization (``Attention`` becomes ``QAttention``: one packed u8s8 GEMM for Q, K and
V, the attention inside one kernel), against flare-onnx's own INT8 graph, through the same
runtime: ``python -m benchmarks.fusion_probe BUNDLE [BUNDLE ...] [--corpus FILE]``.

Each route's graph is put in a copy of the bundle in place of ``model.int8.onnx`` (the
manifest's hash and size updated), so both run through ``flare_onnx.load(...,
workload="bulk")`` — the same tokenizer, batches and one-batch-per-thread streams — and only
the graph differs. Routes: ``flare`` (the bundle's INT8 graph), ``fused-qattention``
(``optimize_model(model_type="bert")`` then ``quantize_dynamic``), ``plain-dynamic``
(``quantize_dynamic`` of the FP32 graph, optimum's and fastembed's recipe: a fixed point every
user can reproduce). Bulk tokens/s over length-sorted batches of 32, the median of interleaved
passes; fidelity to the bundle's FP32 graph (cosine, nearest neighbour); the optimizer's fusion
counts. Export-time only (needs onnx and onnxruntime's transformers tools).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .machine import describe


def _fused(fp32: Path, out: Path, hidden: int, heads: int) -> dict[str, int]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(fp32), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
    counts = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    optimized = out.with_suffix(".fp32-fused.onnx")
    model.save_model_to_file(str(optimized))
    quantize_dynamic(
        str(optimized), str(out), weight_type=QuantType.QInt8, per_channel=False, extra_options={"DefaultTensorType": 1}
    )  # FLOAT: contrib ops defeat shape inference
    return counts


def _plain(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)


def _with_graph(bundle: Path, graph: Path, target: Path) -> Path:
    """A copy of ``bundle`` whose INT8 graph is ``graph`` (hash and size in the manifest); an
    earlier copy at ``target`` is replaced."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("*.xml", "*.bin"))
    record = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    name = record["graphs"]["int8"]["file"]
    shutil.copy(graph, target / name)
    data = (target / name).read_bytes()
    record["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    record["graphs"]["int8"].pop("optimized", None)  # a graph onnxruntime optimizes at load
    record["openvino"] = None
    (target / "manifest.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return target


def _fidelity(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    cos = (got * want).sum(1)
    nn = lambda e: np.argsort(-(e @ e.T), axis=1)[:, 1]  # noqa: E731
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nn": float((nn(got) == nn(want)).mean())}


def probe(bundle: Path, texts: list[str], passes: int, work: Path) -> dict[str, Any]:
    import flare_onnx

    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    fp32 = bundle / json.loads((bundle / "manifest.json").read_text())["graphs"]["fp32"]["file"]
    counts = _fused(fp32, work / "fused.onnx", hidden, heads)
    _plain(fp32, work / "plain.onnx")
    bundles = {
        "flare": bundle,
        "fused-qattention": _with_graph(bundle, work / "fused.onnx", work / "b-fused"),
        "plain-dynamic": _with_graph(bundle, work / "plain.onnx", work / "b-plain"),
    }
    reference = flare_onnx.load(bundle, precision="fp32", threads=2).embed(texts)
    models = {k: flare_onnx.load(b, threads=2, workload="bulk", backend="onnxruntime") for k, b in bundles.items()}
    counter = models["flare"].tokenizer
    tokens = sum(len(e.ids) + 2 for e in counter.encode(texts))
    ordered = sorted(texts, key=len)
    batches = [ordered[i : i + 32] for i in range(0, len(ordered), 32)]
    rates: dict[str, list[float]] = {k: [] for k in models}
    for p in range(passes):  # interleaved, the order rotated each pass
        keys = list(models)[p % len(models) :] + list(models)[: p % len(models)]
        for key in keys:
            models[key].embed(batches[0])  # untimed: wake the threads
            start = time.perf_counter()
            for batch in batches:
                models[key].embed(batch)
            rates[key].append(tokens / (time.perf_counter() - start))
    out: dict[str, Any] = {"bundle": str(bundle), "fusions": counts, "texts": len(texts), "routes": {}}
    base = rates["flare"]
    for key, model in models.items():
        ratios = [r / b for r, b in zip(rates[key], base)]
        out["routes"][key] = {
            "tokens_per_s": statistics.median(rates[key]),
            "vs_flare": statistics.median(ratios),
            "size_mb": (bundles[key] / "model.int8.onnx").stat().st_size / 1e6,
            **_fidelity(model.embed(texts), reference),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from .__main__ import _texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="feature-extraction bundles with an FP32 and an INT8 graph")
    parser.add_argument("--corpus", help="Italian text (default: the shipped sample)")
    parser.add_argument("--texts", type=int, default=480)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    texts, source = _texts(args.corpus, args.texts)
    result: dict[str, Any] = {"machine": describe(), "corpus": source, "runs": []}
    with tempfile.TemporaryDirectory(prefix="flare-fusion-") as tmp:
        for i, bundle in enumerate(args.bundles):
            work = Path(tmp) / str(i)
            work.mkdir()
            run = probe(Path(bundle), texts, args.passes, work)
            result["runs"].append(run)
            print(f"{bundle}: fusions {run['fusions']}", file=sys.stderr)
            print("| route | tokens/s | × flare INT8 | INT8 graph | cosine mean / min | NN = FP32 |")
            print("|---|---|---|---|---|---|")
            for key, r in run["routes"].items():
                print(f"| {key} | {r['tokens_per_s']:,.0f} | {r['vs_flare']:.2f}× | {r['size_mb']:.1f} MB "
                      f"| {r['cosine_mean']:.5f} / {r['cosine_min']:.5f} | {r['nn']:.1%} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
