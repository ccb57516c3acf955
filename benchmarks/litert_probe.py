"""Probe of LiteRT with XNNPACK (issue #37's second route): a BERT/XLM-R encoder written in
TensorFlow from the checkpoint's weights, converted to ``.tflite`` with dynamic-range INT8
(8-bit per-channel weights of every fully-connected layer; XNNPACK quantizes the activations
per row at run time) at one static shape per length bucket, run by ``ai-edge-litert``'s
interpreter against flare-onnx's INT8 bundle, same texts, same batches, two threads each,
interleaved.

Two steps, two environments (the converter needs TensorFlow, which is no dependency of the
project, and ``litert-torch`` pins torch < 2.10 against the project's 2.13):

    python -m venv /tmp/litert
    /tmp/litert/bin/pip install tensorflow-cpu ai-edge-litert safetensors onnxruntime tokenizers tqdm
    /tmp/litert/bin/pip install --no-deps -e .      # flare-onnx's runtime beside it, for the comparison
    /tmp/litert/bin/python benchmarks/litert_probe.py convert CHECKPOINT OUT_DIR   # .tflite per bucket
    /tmp/litert/bin/python -m benchmarks.litert_probe run BUNDLE OUT_DIR --corpus FILE [--json F]

(``run`` imports no TensorFlow: the interpreter is ``ai-edge-litert``'s, a 58 MB package.)
Result on an AVX2 EPYC: 0.32x flare-onnx INT8 in bulk, 0.72x at one fixed shape; stopped
(docs/benchmarks.md).

``convert`` reads ``model.safetensors`` and ``config.json`` (BERT or XLM-RoBERTa, post-LayerNorm,
exact GELU); ``run`` pads each length-sorted batch of 32 to the smallest bucket that holds it and
mean-pools the last hidden state as the bundle does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BUCKETS = (16, 32, 64, 128, 256)
BATCH = 32


# --- convert (TensorFlow) ----------------------------------------------------------------------


def _weights(checkpoint: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    raw = load_file(str(checkpoint / "model.safetensors"))
    prefix = next(p for p in ("bert.", "roberta.", "") if f"{p}embeddings.word_embeddings.weight" in raw)
    return {k[len(prefix) :]: v.astype(np.float32) for k, v in raw.items() if k.startswith(prefix)}, config


def _encoder(w: dict[str, np.ndarray], config: dict[str, Any]):  # noqa: ANN202 (a tf.function)
    import tensorflow as tf

    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    eps = config.get("layer_norm_eps", 1e-12)
    xlmr = config.get("model_type") == "xlm-roberta"
    c = {k: tf.constant(v) for k, v in w.items()}

    def dense(x: Any, name: str) -> Any:  # [N, in] @ W^T + b: the converter makes FULLY_CONNECTED
        return tf.matmul(x, c[f"{name}.weight"], transpose_b=True) + c[f"{name}.bias"]

    def norm(x: Any, name: str) -> Any:
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + eps) * c[f"{name}.weight"] + c[f"{name}.bias"]

    def forward(ids: Any, mask: Any) -> Any:
        b, n = ids.shape
        # XLM-R numbers positions from padding_idx + 1 over the real tokens (right padding)
        pos = tf.range(n) + (config["pad_token_id"] + 1 if xlmr else 0)
        x = tf.gather(c["embeddings.word_embeddings.weight"], ids) + tf.gather(
            c["embeddings.position_embeddings.weight"], pos
        )
        x = norm(x + c["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        x = tf.reshape(x, [b * n, hidden])
        bias = (1.0 - tf.cast(mask, tf.float32))[:, None, None, :] * -1e9
        d = hidden // heads
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def split(t: Any) -> Any:
                return tf.transpose(tf.reshape(t, [b, n, heads, d]), [0, 2, 1, 3])

            q, k, v = (split(dense(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
            att = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / math.sqrt(d) + bias, axis=-1)
            ctx = tf.reshape(tf.transpose(tf.matmul(att, v), [0, 2, 1, 3]), [b * n, hidden])
            x = norm(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = tf.nn.gelu(dense(x, p + "intermediate.dense"), approximate=False)
            x = norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
        return tf.reshape(x, [b, n, hidden])

    return forward


def convert(checkpoint: Path, out: Path, buckets: tuple[int, ...], batch: int) -> None:
    import tensorflow as tf

    w, config = _weights(checkpoint)
    forward = _encoder(w, config)
    out.mkdir(parents=True, exist_ok=True)
    for n in buckets:
        fn = tf.function(
            forward, input_signature=[tf.TensorSpec([batch, n], tf.int32), tf.TensorSpec([batch, n], tf.int32)]
        )
        concrete = fn.get_concrete_function()
        for kind in ("fp32", "int8"):
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
            if kind == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, no calibration
            path = out / f"encoder-{kind}-{batch}x{n}.tflite"
            path.write_bytes(converter.convert())
            print(f"{path}: {path.stat().st_size / 1e6:.1f} MB", flush=True)


# --- run (ai-edge-litert, flare-onnx) ----------------------------------------------------------


class LiteRT:
    """One interpreter per bucket (static shapes), XNNPACK by default, ``threads`` threads."""

    def __init__(self, folder: Path, kind: str, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.runners: dict[int, Any] = {}
        for path in sorted(folder.glob(f"encoder-{kind}-*.tflite")):
            n = int(path.stem.rsplit("x", 1)[1])
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
            self.runners[n] = interpreter
        if not self.runners:
            raise SystemExit(f"no encoder-{kind}-*.tflite in {folder}: run `convert` first")

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        b, n = ids.shape
        bucket = min(k for k in self.runners if k >= n)
        interpreter = self.runners[bucket]
        inputs = interpreter.get_input_details()
        full_ids = np.full((BATCH, bucket), 0, np.int32)
        full_mask = np.zeros((BATCH, bucket), np.int32)
        full_ids[:b, :n], full_mask[:b, :n] = ids, mask
        # the converter names inputs by the function's arguments; order them by name
        for detail, value in zip(sorted(inputs, key=lambda d: d["name"]), (full_ids, full_mask)):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        hidden = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:b, :n]
        m = mask[..., None].astype(np.float32)
        return (hidden * m).sum(1) / m.sum(1)


def _texts(corpus: Path, limit: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.tagging import read_conllu

    return [text for text, _, _ in read_conllu(corpus)][:limit]


def run(bundle: Path, folder: Path, corpus: Path, texts_n: int, passes: int, threads: int) -> dict[str, Any]:
    import flare_onnx

    texts = _texts(corpus, texts_n)
    model = flare_onnx.load(bundle, threads=threads, workload="bulk", max_batch_size=BATCH)
    fp32 = flare_onnx.load(bundle, precision="fp32", threads=threads, max_batch_size=BATCH)
    max_len = max(BUCKETS)
    encs = model.tokenizer.tokenizer.encode_batch(texts)
    rows = sorted((e.ids[:max_len] for e in encs), key=len)
    batches = []
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        n = max(map(len, chunk))
        ids = np.array([r + [model.manifest.special.pad_id] * (n - len(r)) for r in chunk], np.int32)
        batches.append((ids, (ids != model.manifest.special.pad_id).astype(np.int32)))
    tokens = sum(len(r) for r in rows)
    lite = {k: LiteRT(folder, k, threads) for k in ("int8", "fp32")}

    def litert(kind: str) -> np.ndarray:
        return np.concatenate([lite[kind](ids, mask) for ids, mask in batches])

    order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids[:max_len]))
    sorted_texts = [texts[i] for i in order]
    contenders = {
        "flare-onnx INT8 (bulk)": lambda: model.embed(sorted_texts, normalize=False),
        "LiteRT INT8 (XNNPACK)": lambda: litert("int8"),
        "LiteRT FP32 (XNNPACK)": lambda: litert("fp32"),
    }
    reference = fp32.embed(sorted_texts, normalize=False)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    outputs: dict[str, np.ndarray] = {}
    for p in range(passes):  # interleaved, rotating order
        names = list(contenders)
        for name in names[p % len(names) :] + names[: p % len(names)]:
            start = time.perf_counter()
            outputs[name] = np.asarray(contenders[name]())
            rates[name].append(tokens / (time.perf_counter() - start))
    base = statistics.median(rates["flare-onnx INT8 (bulk)"])
    return {
        "bundle": str(bundle),
        "texts": len(texts),
        "tokens": tokens,
        "threads": threads,
        "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "vs_flare_int8": {k: statistics.median(v) / base for k, v in rates.items()},
        "fidelity_vs_bundle_fp32": {k: _fidelity(v, reference) for k, v in outputs.items()},
        "tflite_mb": {k: sum(p.stat().st_size for p in folder.glob(f"encoder-{k}-*.tflite")) / 1e6 for k in lite},
        "fixed_shape": _fixed_shape(bundle, folder, batches, threads, passes),
    }


def _fixed_shape(bundle: Path, folder: Path, batches: list[tuple[np.ndarray, np.ndarray]], threads: int,
                 passes: int) -> dict[str, float]:  # fmt: skip
    """The kernels alone at one shape (32 x 32, the same ids, no padding to a bucket, no
    tokenizer): LiteRT's interpreters against onnxruntime on the bundle's graphs, tokens/s."""
    import onnxruntime as ort

    n = 32  # the first full batch of texts at least n tokens long, cut to n
    ids = next(i for i, _ in batches if len(i) == BATCH and i.shape[1] >= n)[:, :n].copy()
    mask = np.ones_like(ids)
    graphs = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["graphs"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    runs: dict[str, Any] = {}
    for precision in ("int8", "fp32"):
        session = ort.InferenceSession(
            str(bundle / graphs[precision]["file"]), options, providers=["CPUExecutionProvider"]
        )
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        runs[f"onnxruntime, the bundle's {precision.upper()} graph"] = lambda s=session, f=feed: s.run(None, f)
        lite = LiteRT(folder, precision, threads)
        runs[f"LiteRT {precision.upper()} (XNNPACK)"] = lambda lt=lite: lt(ids, mask)
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(passes):
        for key, run in runs.items():
            run()
            start = time.perf_counter()
            for _ in range(10):
                run()
            rates[key].append(10 * BATCH * n / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def _fidelity(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    a = got / np.linalg.norm(got, axis=1, keepdims=True)
    b = want / np.linalg.norm(want, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    nn = float(np.mean((a @ a.T - 2 * np.eye(len(a))).argmax(1) == (b @ b.T - 2 * np.eye(len(b))).argmax(1)))
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "nn_agreement": nn}


def one_pass(kind: str, bundle: Path, folder: Path, corpus: Path, texts_n: int, threads: int) -> tuple[float, float]:
    """One bulk pass of one contender alone (``rss`` runs it in a fresh process): its cold
    start (loading to the first batch's answer, s) and its process's peak RSS (MB)."""
    texts = _texts(corpus, texts_n)
    start = time.perf_counter()
    if kind == "flare-onnx":
        import flare_onnx

        model = flare_onnx.load(bundle, threads=threads, workload="bulk", max_batch_size=BATCH)
        model.embed(texts[:BATCH])
        cold = time.perf_counter() - start
        model.embed(texts)
        return cold, _peak_rss_mb()
    from tokenizers import Tokenizer  # the bundle's tokenizer alone: no onnxruntime session in this process

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    pad, lite = manifest["model"]["special_tokens"]["pad"][1], LiteRT(folder, "int8", threads)
    cold = 0.0
    for i in range(0, len(texts), BATCH):
        rows = [e.ids[: max(BUCKETS)] for e in tokenizer.encode_batch(texts[i : i + BATCH])]
        n = max(map(len, rows))
        ids = np.array([r + [pad] * (n - len(r)) for r in rows], np.int32)
        lite(ids, (ids != pad).astype(np.int32))
        cold = cold or time.perf_counter() - start
    return cold, _peak_rss_mb()


def _peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not carry the parent's
    peak over ``fork`` + ``exec``)."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024


def _alone(kind: str, args: argparse.Namespace) -> list[float]:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.litert_probe", "rss", kind, str(args.bundle), str(args.tflite),
         "--corpus", str(args.corpus), "--texts", str(args.texts), "--threads", str(args.threads)],
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("convert")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out", type=Path)
    for name in ("run", "rss"):
        r = sub.add_parser(name)
        if name == "rss":
            r.add_argument("kind", choices=["flare-onnx", "litert"])
        r.add_argument("bundle", type=Path)
        r.add_argument("tflite", type=Path)
        r.add_argument("--corpus", type=Path, required=True)
        r.add_argument("--texts", type=int, default=640)
        r.add_argument("--passes", type=int, default=5)
        r.add_argument("--threads", type=int, default=2)
        r.add_argument("--json")
    args = parser.parse_args(argv)
    if args.step == "convert":
        convert(args.checkpoint, args.out, BUCKETS, BATCH)
        return 0
    if args.step == "rss":
        print(*one_pass(args.kind, args.bundle, args.tflite, args.corpus, args.texts, args.threads))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.machine import describe

    result = {
        "machine": describe(),
        **run(args.bundle, args.tflite, args.corpus, args.texts, args.passes, args.threads),
    }
    alone = {k: _alone(k, args) for k in ("flare-onnx", "litert")}
    result["cold_start_s"] = {k: v[0] for k, v in alone.items()}
    result["peak_rss_mb_alone"] = {k: v[1] for k, v in alone.items()}
    print("| engine | tokens/s | × flare-onnx INT8 | cosine mean / min vs FP32 | NN = FP32 |\n|---|---|---|---|---|")
    for key, rate in result["tokens_per_s"].items():
        f = result["fidelity_vs_bundle_fp32"][key]
        print(f"| {key} | {rate:,.0f} | {result['vs_flare_int8'][key]:.2f}× | {f['cosine_mean']:.5f} / "
              f"{f['cosine_min']:.5f} | {f['nn_agreement']:.1%} |")  # fmt: skip
    print(
        f"alone: peak RSS (MB) {result['peak_rss_mb_alone']}, cold start (s) {result['cold_start_s']}; "
        f".tflite MB: {result['tflite_mb']}"
    )
    print("fixed shape 32 x 32, tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in result["fixed_shape"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
