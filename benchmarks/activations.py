"""Bundles of one model exported with different INT8 activations, side by side (issue #36): each
bundle's INT8 graph against the first one's FP32 graph on a corpus, tokens/s in
interleaved passes, two threads:

    flare-onnx export CKPT --task feature-extraction --activations per-tensor -o A
    flare-onnx export CKPT --task feature-extraction -o B
    python -m benchmarks.activations A B --corpus it_isdt-ud-test.conllu [--prefix "query: "] [--stress]

``--workload interactive`` runs each batch on both threads instead of one batch per thread;
``--busy`` times the passes with a CPU-bound process on one core (a neighbour on a shared host).
``--stress`` measures fidelity (no speed) on text unlike the exporter's calibration sample too,
where scales fixed at export are most likely to fall short: the same sentences in capitals,
with numbers, dates and addresses put in, with typing noise, and joined into long documents.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .fusion_probe import _fidelity
from .machine import describe
from .spin import busy_core


def stressed(texts: list[str], seed: int = 0) -> dict[str, list[str]]:
    """``texts`` rewritten four ways a calibration sample of clean sentences does not cover."""
    rng = random.Random(seed)

    def numbers(t: str) -> str:
        extra = rng.choice(["il 12/03/2024 alle 17:45", "al n. 4821, int. 7", "per € 1.299,90 (IVA 22%)",
                            "su https://www.esempio.it/pagina?id=88", "a mario.rossi@posta.it",
                            "tel. +39 02 5550 1234"])  # fmt: skip
        words = t.split()
        words.insert(rng.randrange(len(words) + 1), extra)
        return " ".join(words)

    def noisy(t: str) -> str:
        chars = list(t)
        for _ in range(max(1, len(chars) // 15)):
            i = rng.randrange(len(chars))
            chars[i] = rng.choice("qwertyuiopasdfghjklzxcvbnm.,;!?àèéìòù0123456789 ")
        return "".join(chars)

    long = [" ".join(texts[i : i + 12]) for i in range(0, len(texts), 12)]
    return {"capitals": [t.upper() for t in texts], "numbers": [numbers(t) for t in texts],
            "noisy": [noisy(t) for t in texts], "long": long}  # fmt: skip


def _speed(models: dict[str, Any], texts: list[str], prefix: str, passes: int) -> tuple[dict[str, Any], int]:
    encoded = next(iter(models.values())).tokenizer.encode([prefix + t for t in texts])
    tokens = sum(len(e.ids) for e in encoded) + 2 * len(texts)
    rates: dict[str, list[float]] = {k: [] for k in models}
    out: dict[str, np.ndarray] = {}
    for p in range(passes):  # interleaved, order alternating
        for key in list(models)[:: 1 if p % 2 == 0 else -1]:
            start = time.perf_counter()
            out[key] = models[key].embed(texts, prefix=prefix)
            rates[key].append(tokens / (time.perf_counter() - start))
    return {k: (out[k], statistics.median(r)) for k, r in rates.items()}, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+", help="the first one's FP32 graph is the reference")
    parser.add_argument(
        "--corpus", type=Path, required=True, help="held-out Italian text (CoNLL-U, CoNLL or one per line)"
    )
    parser.add_argument("--texts", type=int, default=1000, help="the first N distinct sentences of 3-80 words")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--stress", action="store_true", help="fidelity on rewritten text too (see above)")
    parser.add_argument("--busy", action="store_true", help="time with one core kept busy by another process")
    parser.add_argument(
        "--workload",
        choices=["bulk", "interactive"],
        default="bulk",
        help="how onnxruntime runs: a batch per thread (bulk) or each batch on both threads",
    )
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import flare_onnx
    from flare_onnx_export import read_corpus

    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    names = [b.name for b in args.bundles]
    fp32 = flare_onnx.load(args.bundles[0], precision="fp32", threads=2)
    models = {n: flare_onnx.load(b, threads=2, workload=args.workload) for n, b in zip(names, args.bundles)}
    with busy_core(args.busy):
        runs, tokens = _speed(models, texts, args.prefix, args.passes)
    reference = fp32.embed(texts, prefix=args.prefix)
    result: dict[str, Any] = {"machine": describe(), "texts": len(texts), "tokens": tokens, "rows": {}}
    result["busy"], result["workload"] = args.busy, args.workload
    for key, (got, rate) in runs.items():  # unit vectors (the bundles normalize): cosine is the dot product
        r = result["rows"][key] = {**_fidelity(got, reference), "tokens_per_s": rate}
        print(f"{key}: cosine {r['cosine_mean']:.5f} / {r['cosine_min']:.5f}, NN {r['nn']:.1%}, "
              f"{rate:,.0f} tokens/s ({rate / runs[names[0]][1]:.2f}×)")  # fmt: skip
    if args.stress:
        result["stress"] = {}
        for kind, rewritten in stressed(texts).items():
            reference = fp32.embed(rewritten, prefix=args.prefix)
            rows = result["stress"][kind] = {k: _fidelity(m.embed(rewritten, prefix=args.prefix), reference)
                                             for k, m in models.items()}  # fmt: skip
            cells = [f"{k} {r['cosine_mean']:.5f} / {r['cosine_min']:.5f}, NN {r['nn']:.1%}" for k, r in rows.items()]
            print(f"{kind} ({len(rewritten)} texts): " + "; ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
