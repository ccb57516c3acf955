"""Per-tensor against per-row INT8 activations, as exported (issue #36): two bundles of one
model, each one's INT8 graph against the first one's FP32 graph on a corpus, bulk tokens/s in
interleaved passes, two threads:

    flare-onnx export CKPT --task feature-extraction -o A
    flare-onnx export CKPT --task feature-extraction --activations per-row -o B
    python -m benchmarks.activations A B --corpus it_isdt-ud-test.conllu [--prefix "query: "]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .fusion_probe import _fidelity
from .machine import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_tensor", type=Path)
    parser.add_argument("per_row", type=Path)
    parser.add_argument(
        "--corpus", type=Path, required=True, help="held-out Italian text (CoNLL-U, CoNLL or one per line)"
    )
    parser.add_argument("--texts", type=int, default=1000, help="the first N distinct sentences of 3-80 words")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import flare_onnx
    from flare_onnx_export import read_corpus

    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    reference = flare_onnx.load(args.per_tensor, precision="fp32", threads=2).embed(texts, prefix=args.prefix)
    models = {k: flare_onnx.load(b, threads=2, workload="bulk") for k, b in (("per-tensor", args.per_tensor),
                                                                             ("per-row", args.per_row))}  # fmt: skip
    encoded = models["per-tensor"].tokenizer.encode([args.prefix + t for t in texts])
    tokens = sum(len(e.ids) for e in encoded) + 2 * len(texts)
    rates: dict[str, list[float]] = {k: [] for k in models}
    out: dict[str, np.ndarray] = {}
    for p in range(args.passes):  # interleaved, order alternating
        for key in list(models)[:: 1 if p % 2 == 0 else -1]:
            start = time.perf_counter()
            out[key] = models[key].embed(texts, prefix=args.prefix)
            rates[key].append(tokens / (time.perf_counter() - start))
    result = {"machine": describe(), "texts": len(texts), "tokens": tokens, "rows": {}}
    for key, got in out.items():  # unit vectors (the bundles normalize): cosine is the dot product
        r = result["rows"][key] = {**_fidelity(got, reference), "tokens_per_s": statistics.median(rates[key])}
        print(f"{key}: cosine {r['cosine_mean']:.5f} / {r['cosine_min']:.5f}, NN {r['nn']:.1%}, "
              f"{r['tokens_per_s']:,.0f} tokens/s")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
