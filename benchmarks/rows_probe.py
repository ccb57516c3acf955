"""Probe (issue #36): LayerNorm outputs quantized on run-time rows instead of with scales fixed at export.

The default recipe quantizes the two LayerNorm outputs of each layer — what Q/K/V and the FFN's
first MatMul read — with SmoothQuant's factors and one scale fixed at export, the cheapest form
there is; the other MatMul inputs take each row's own scale at run time. This probe rebuilds a
bundle's INT8 graph with the smoothed LayerNorm outputs on run-time rows too: the FFN's input
only (``--rows ffn``, the attention block's LayerNorm), or every one (``--rows all``); ``--clip C``
sets the fixed scales that remain at C × the calibration text's peak instead of the peak itself
(C < 1 saturates the rarest values for finer steps everywhere else). Weights by the exporter's
GPTQ, calibration on the shipped sample, as the exporter does.

    python -m benchmarks.rows_probe artifacts/exp/minilm-gptq artifacts/exp/minilm-ffnrow --rows ffn
    python -m benchmarks.activations artifacts/exp/minilm-gptq artifacts/exp/minilm-ffnrow \
        --corpus ../shared/data/wikineural-it/val.conllu

Measured (Intel Xeon with AMX, 2026-12-06; docs/int8.md): MiniLM's neighbours +2.0 points on
WikiNEuRal, +0.0 on ISDT test, e5's −0.1 and +0.2, at 0.91–0.93× the default. Not adopted.
Clipping the fixed scales loses: MiniLM NN 92.8 → 78.1% at C = 0.85 (WikiNEuRal).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

#: which LayerNorm outputs leave their fixed scale for run-time rows
ROWS = {"none": None, "ffn": "attention/output/LayerNorm", "all": "LayerNorm"}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.fusion_probe import _with_graph
    from benchmarks.gptaq_probe import _calibration
    from flare_onnx_export.quantize import quantize_int8
    from flare_onnx_export.rounding import input_hessians
    from flare_onnx_export.smoothing import smoothing

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--rows", choices=sorted(ROWS), required=True)
    p.add_argument("--clip", type=float, default=1.0, help="the fixed scales at this share of the calibration peak")
    p.add_argument("--prefix", default="", help="what the exporter puts before each calibration text")
    args = p.parse_args(argv)
    batches = _calibration(args.bundle, args.prefix, None)
    fp32 = args.bundle / "model.fp32.onnx"
    smooth, static = smoothing(fp32, batches)
    rows = ROWS[args.rows]
    fixed = {x: peak * args.clip for x, peak in static.items() if rows is None or rows not in x}
    work = Path(tempfile.mkdtemp())
    quantize_int8(fp32, work / "int8.onnx", activations="per-row", smooth=smooth, static=fixed,
                  hessians=input_hessians(fp32, batches))  # fmt: skip
    _with_graph(args.bundle, work / "int8.onnx", args.output)
    shutil.rmtree(work)
    print(f"wrote {args.output}: {len(static) - len(fixed)} of {len(static)} LayerNorm outputs on run-time rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
