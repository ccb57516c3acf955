"""The INT8 ceiling of this machine: onnxruntime's u8s8 ``MatMulInteger`` rate on encoder-sized
GEMMs, and the tokens/s it would allow if an encoder did nothing but its INT8 GEMMs."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np


def int8_gemm_rate(threads: int, *, rows: int = 2048, k: int = 384, n: int = 1536, runs: int = 30) -> float:
    """Median GOP/s (2 ops per multiply-add) of ``MatMulInteger`` [rows, k] x [k, n]."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (rows, k), dtype=np.uint8)
    session.run(None, {"a": a})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"a": a})
        times.append(time.perf_counter() - t0)
    return 2 * rows * k * n / statistics.median(times) / 1e9


def ceiling(config: dict[str, Any], threads: int) -> dict[str, Any]:
    """Tokens/s the INT8 GEMM rate allows for an encoder of this ``config.json``."""
    layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    ffn = int(config["intermediate_size"])
    ops_per_token = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn)
    rate = int8_gemm_rate(threads)
    return {"int8_gemm_gops": rate, "ops_per_token": ops_per_token, "tokens_per_s": rate * 1e9 / ops_per_token}
