"""Probe of IREE (issue #37's last route): the bundle's FP32 graph at one static shape,
compiled by IREE for this CPU (``llvm-cpu``, ``target-cpu=host``, data tiling), against
onnxruntime on the same graph and on the bundle's INT8 graph, same ids, two threads each:
``python -m benchmarks.iree_probe BUNDLE [--batch 32 --length 32]``.

Needs ``pip install iree-base-compiler iree-base-runtime`` (not a project dependency: the route
missed its threshold). The graph is made static and constant-folded by onnxruntime's basic
level first: IREE's ONNX import otherwise fails at run time on the encoder's ``Expand``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .machine import describe


def _static(fp32: Path, out: Path, batch: int, length: int) -> None:
    import onnx
    import onnxruntime as ort
    from onnx.tools import update_model_dims

    model = onnx.load(str(fp32))
    hidden = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    dims_in = {i.name: [batch, length] for i in model.graph.input}
    dims_out = {o.name: [batch, length, hidden] for o in model.graph.output}
    onnx.save(update_model_dims.update_inputs_outputs_dims(model, dims_in, dims_out), str(out))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])


def _compile(onnx_file: Path, work: Path) -> Path:
    mlir, vmfb = work / "model.mlir", work / "model.vmfb"
    subprocess.run(
        [sys.executable, "-m", "iree.compiler.tools.import_onnx", str(onnx_file), "-o", str(mlir)], check=True
    )
    from iree.compiler.tools import compile_file

    compile_file(str(mlir), output_file=str(vmfb), target_backends=["llvm-cpu"],
                 extra_args=["--iree-llvmcpu-target-cpu=host", "--iree-opt-data-tiling"])  # fmt: skip
    return vmfb


def probe(bundle: Path, batch: int, length: int, passes: int, work: Path) -> dict[str, Any]:
    import iree.runtime as ireert
    import onnxruntime as ort

    import flare_onnx

    graphs = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["graphs"]
    _static(bundle / graphs["fp32"]["file"], work / "static.onnx", batch, length)
    vmfb = _compile(work / "static.onnx", work)
    from flare_onnx_export import italian_sentences

    model = flare_onnx.load(bundle, precision="fp32", threads=1)
    rows = [e.ids[:length] for e in model.tokenizer.tokenizer.encode_batch(italian_sentences())]
    pad = model.manifest.special.pad_id
    ids = np.array([r + [pad] * (length - len(r)) for r in rows[: batch * 5]], np.int64).reshape(5, batch, length)
    mask = (ids != pad).astype(np.int64)
    ireert.flags.parse_flags("--task_topology_max_group_count=2")
    config = ireert.Config("local-task")
    context = ireert.SystemContext(config=config)
    context.add_vm_module(ireert.VmModule.mmap(config.vm_instance, str(vmfb)))
    main_graph = context.modules.module["main_graph"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {p: ort.InferenceSession(str(bundle / graphs[p]["file"]), options) for p in ("fp32", "int8")}
    runs = {
        "IREE FP32 (compiled for this CPU)": lambda i: np.asarray(main_graph(ids[i], mask[i]).to_host()),
        "onnxruntime FP32": lambda i: sessions["fp32"].run(None, {"input_ids": ids[i], "attention_mask": mask[i]})[0],
        "onnxruntime, flare-onnx INT8 graph": lambda i: sessions["int8"].run(
            None, {"input_ids": ids[i], "attention_mask": mask[i]}
        )[0],
    }
    diff = float(np.abs(runs["IREE FP32 (compiled for this CPU)"](0) - runs["onnxruntime FP32"](0)).max())
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(passes):  # interleaved
        for key, run in runs.items():
            run(0)
            start = time.perf_counter()
            for i in range(5):
                run(i)
            rates[key].append(5 * batch * length / (time.perf_counter() - start))
    int8 = statistics.median(rates["onnxruntime, flare-onnx INT8 graph"])
    return {
        "bundle": str(bundle),
        "shape": [batch, length],
        "max_abs_diff_iree_vs_ort_fp32": diff,
        "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "vs_flare_int8": {k: statistics.median(v) / int8 for k, v in rates.items()},
        "vmfb_mb": vmfb.stat().st_size / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flare-iree-") as tmp:
        result = {"machine": describe(), **probe(Path(args.bundle), args.batch, args.length, args.passes, Path(tmp))}
    print(f"max |IREE - onnxruntime| FP32: {result['max_abs_diff_iree_vs_ort_fp32']:.2e}")
    print("| engine | tokens/s (padded) | × flare-onnx INT8 |\n|---|---|---|")
    for key, rate in result["tokens_per_s"].items():
        print(f"| {key} | {rate:,.0f} | {result['vs_flare_int8'][key]:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
