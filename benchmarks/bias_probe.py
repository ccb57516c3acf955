"""How much of INT8's error a bias correction could remove (issue #36's "bias correction costs
nothing at run time"), measured before building one:

    python -m benchmarks.bias_probe BUNDLE --corpus val.conllu [--prefix "query: "] [--json OUT]

A bias correction moves every output by a fixed vector, so the most it can take away is the
mean of the error. The probe splits INT8's embedding error (INT8 − FP32, unit vectors) into that
mean and the rest, on the exporter's own calibration sample and on held-out text, then takes
the calibration sample's mean error away from the held-out embeddings — the correction at the
model's output, fitted where the exporter would fit it — and measures fidelity before and after.
A per-layer correction acts inside the network, not on the output, but its room is the same
kind: a small mean share means a small gain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .fusion_probe import _fidelity
from .machine import describe


def mean_share(error: np.ndarray) -> float:
    """The share of the error's energy (mean squared norm per text) in its mean vector."""
    mean = error.mean(axis=0)
    return float(mean @ mean / (error * error).sum(axis=1).mean())


def probe(bundle: Path, calibration: list[str], held_out: list[str], prefix: str) -> dict[str, Any]:
    import flare_onnx

    fp32 = flare_onnx.load(bundle, precision="fp32", threads=2)
    int8 = flare_onnx.load(bundle, threads=2, workload="bulk")
    embedded = {name: (fp32.embed(texts, prefix=prefix), int8.embed(texts, prefix=prefix))
                for name, texts in (("calibration", calibration), ("held_out", held_out))}  # fmt: skip
    shift = (embedded["calibration"][1] - embedded["calibration"][0]).mean(axis=0)
    want, got = embedded["held_out"]
    corrected = got - shift
    corrected /= np.linalg.norm(corrected, axis=1, keepdims=True)
    return {
        "mean_share": {name: mean_share(q - f) for name, (f, q) in embedded.items()},
        "held_out": _fidelity(got, want),
        "held_out_corrected": _fidelity(corrected, want),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--corpus", type=Path, required=True, help="held-out Italian text (CoNLL-U, CoNLL or one per line)"
    )
    parser.add_argument("--texts", type=int, default=1000, help="the first N distinct sentences of 3-80 words")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from flare_onnx_export import italian_sentences, read_corpus

    held_out = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    result = {"machine": describe(), "bundle": args.bundle.name, "texts": len(held_out),
              **probe(args.bundle, italian_sentences(), held_out, args.prefix)}  # fmt: skip
    share = result["mean_share"]
    print(f"mean share of the error: calibration {share['calibration']:.1%}, held out {share['held_out']:.1%}")
    for key in ("held_out", "held_out_corrected"):
        r = result[key]
        print(f"{key}: cosine {r['cosine_mean']:.5f} / {r['cosine_min']:.5f}, NN {r['nn']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
