"""Bulk embedding work, every engine in one interleaved run, quiet and beside one busy core:
``python -m benchmarks.bulk [--corpus FILE] [--json OUT]`` (``--table OUT.json`` reprints a run's table).

Contenders: flare-onnx on onnxruntime (the default, and its bulk workload: one batch per
thread) and on OpenVINO, OpenVINO + NNCF INT8 with either hint, CTranslate2's int8 encoder
(one batch at a time, and one per thread), and PyTorch FP32. For each model (the
Flare-IT-shaped reference for speed, all-MiniLM-L6-v2 for fidelity on trained weights):
throughput over length-sorted batches and batch-1 latency, interleaved pass by pass,
once on a quiet machine and once with a CPU-bound neighbour on one core; fidelity to PyTorch;
peak RSS and cold start in fresh processes. Medians, and ratios to the best peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .contenders import BASELINE, CONTENDERS, available
from .spin import busy_core

FLARE = ["flare-int8", "flare-int8-bulk", "flare-openvino"]
PEERS = ["nncf-latency", "nncf-throughput", "ct2-int8", "ct2-int8-streams"]


def _measure(contenders: dict[str, Any], texts: list[str], counter: Any, args: argparse.Namespace) -> dict[str, Any]:
    from . import workloads

    lengths = [len(e.ids) + 2 for e in counter.encode(texts)]
    tokens = sum(lengths)
    batches = workloads.sorted_batches(texts, lengths, args.batch)
    thr, outputs = workloads.throughput(contenders, "embed", batches, tokens, repeats=args.repeats)
    lat = workloads.latency(contenders, "embed", texts[: args.latency_texts])
    fid = workloads.fidelity("embed", outputs, batches)
    return {"tokens": tokens, "throughput": thr, "latency": lat, "fidelity": fid}


def _section(
    name: str, art: Any, keys: list[str], texts: list[str], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    from flare_onnx import load

    from . import workloads

    print(f"== {name}", file=sys.stderr, flush=True)
    contenders = {k: CONTENDERS[k](art, args.threads) for k in keys}
    for c in contenders.values():
        c.load()
    counter = load(art.bundle, precision="fp32", threads=1).tokenizer
    section: dict[str, Any] = {"model": art.label, "texts": len(texts), "loads": {}}
    for load_name in args.loads:
        with busy_core(load_name == "busy"):
            section["loads"][load_name] = _measure(contenders, texts, counter, args)
        _print(section["loads"][load_name], keys, f"{name}, {load_name}")
    del contenders
    if not args.skip_fresh:
        texts_file = work / "texts-bulk.json"
        texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        fresh: dict[str, Any] = {}
        for key in keys:
            rss = workloads.fresh_process(
                key, "embed", art, texts_file, mode="rss", threads=args.threads, batch=args.batch
            )
            colds = [
                workloads.fresh_process(
                    key, "embed", art, texts_file, mode="cold", threads=args.threads, batch=args.batch
                )["cold_start_s"]
                for _ in range(args.cold)
            ]
            fresh[key] = {"peak_rss_mb": rss["peak_rss_mb"], "cold_start_s": statistics.median(colds)}
            print(
                f"  {key:>16}: peak RSS {rss['peak_rss_mb']:.0f} MB, cold start {fresh[key]['cold_start_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        section["fresh"] = fresh
    return section


def import_floor(runs: int) -> float:
    """Median seconds for a fresh interpreter to import what any onnxruntime runtime needs
    (numpy, tokenizers, onnxruntime) and exit: the part of a cold start no bundle can save."""
    import subprocess

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy, tokenizers, onnxruntime"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _print(result: dict[str, Any], keys: list[str], title: str) -> None:
    thr, lat, fid = result["throughput"], result["latency"], result["fidelity"]
    peers = [k for k in keys if k in PEERS]
    best = max((thr[k]["tokens_per_s"] for k in peers), default=None)
    best_p50 = min((lat[k]["p50_ms"] for k in peers), default=None)
    print(f"-- {title}: {result['tokens']:,} tokens", file=sys.stderr)
    for k in keys:
        rate, p50 = thr[k]["tokens_per_s"], lat[k]["p50_ms"]
        vs = f"{rate / best:.2f}x best peer" if best else ""
        vs50 = f"{p50 / best_p50:.2f}x" if best_p50 else ""
        cos = fid.get(k, {}).get("cosine_mean", float("nan"))
        nn = fid.get(k, {}).get("nn_agreement", float("nan"))
        print(
            f"  {k:>16}: {rate:9,.0f} tok/s {vs:>16} | p50 {p50:6.1f} ms {vs50:>6} | cos {cos:.5f} NN {nn:.3f}",
            file=sys.stderr,
            flush=True,
        )


def markdown(results: dict[str, Any]) -> str:
    """One table per model: every contender, quiet and busy, against the best peer."""
    from .contenders import CONTENDERS

    out = []
    for section in results["sections"].values():
        out.append(f"#### {section['model']}\n")
        loads = list(section["loads"])
        head = ["contender"] + [
            f"{h} ({ld})" for ld in loads for h in ("tokens/s", "× best peer", "batch-1 p50", "× best peer")
        ]
        head += ["peak RSS", "cold start", "cosine to PyTorch", "NN = PyTorch"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        first = section["loads"][loads[0]]
        for key in first["throughput"]:
            cells = [CONTENDERS[key].name]
            for ld in loads:
                r = section["loads"][ld]
                peers = [k for k in r["throughput"] if k in PEERS]
                best = max(r["throughput"][k]["tokens_per_s"] for k in peers)
                best50 = min(r["latency"][k]["p50_ms"] for k in peers)
                rate, p50 = r["throughput"][key]["tokens_per_s"], r["latency"][key]["p50_ms"]
                cells += [f"{rate:,.0f}", f"{rate / best:.2f}×", f"{p50:.1f} ms", f"{p50 / best50:.2f}×"]
            fresh = section.get("fresh", {}).get(key)
            cells += [
                f"{fresh['peak_rss_mb']:.0f} MB" if fresh else "–",
                f"{fresh['cold_start_s']:.2f} s" if fresh else "–",
            ]
            fid = first["fidelity"].get(key, {})
            cells += [f"{fid.get('cosine_mean', float('nan')):.5f}", f"{fid.get('nn_agreement', float('nan')):.1%}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if "import_floor_s" in results:
        out.append(
            f"A fresh interpreter importing numpy, tokenizers and onnxruntime, and nothing else: "
            f"{results['import_floor_s']:.2f} s (the part of any cold start above that no bundle can save).\n"
        )
    return "\n".join(out)


def chart(results: dict[str, Any], path: Path) -> None:
    """Tokens/s of every contender, quiet and beside a busy core, one panel per model;
    flare-onnx in blue, peers in grey, the best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from .contenders import CONTENDERS

    sections = list(results["sections"].values())
    keys = list(sections[0]["loads"]["quiet"]["throughput"])
    fig, axes = plt.subplots(
        len(sections), 1, figsize=(10, (0.5 * len(keys) + 1.0) * len(sections) + 0.6), squeeze=False
    )
    for ax, section in zip(axes[:, 0], sections):
        loads = section["loads"]
        rate = {ld: {k: loads[ld]["throughput"][k]["tokens_per_s"] for k in keys} for ld in loads}
        order = sorted(keys, key=lambda k: rate["quiet"][k], reverse=True)
        for j, ld in enumerate(loads):
            ys = [i + (0.2 if j else -0.2) for i in range(len(order))]
            flare = ["#1f4e99", "#8fb0e0"][j]
            peer = ["#6a6a6a", "#c4c4c4"][j]
            colors = [flare if k.startswith("flare") else peer for k in order]
            ax.barh(ys, [rate[ld][k] for k in order], height=0.4, color=colors, label=ld)
            for y, k in zip(ys, order):
                ax.text(rate[ld][k], y, f" {rate[ld][k]:,.0f} ({ld})", va="center", fontsize=7)
        ax.set_yticks(range(len(order)), [CONTENDERS[k].name for k in order], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(rate["quiet"].values()) * 1.25)
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_title(f"{section['model']}", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    isa = results["machine"]["isa"]
    eight_bit = next(
        (
            name
            for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx2", "AVX2"))
            if isa.get(flag)
        ),
        "no AVX2",
    )
    cpu = f"{results['machine']['cpu']}, {eight_bit}"
    fig.suptitle(
        f"Bulk embeddings, tokens/s (higher is better), {results['threads']} threads, {cpu}:\n"
        f"quiet (dark) and beside one busy core (light)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from flare_onnx.engine.session import available_cpus

    from . import machine
    from .__main__ import _texts, prepare

    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", help="Italian text, one sentence per line or CoNLL-U (default: the shipped sample)")
    p.add_argument("--model", default="osiria/flare-it", help="Hub id or directory (offline: the reference checkpoint)")
    p.add_argument("--contenders", nargs="+", default=[BASELINE, *FLARE, *PEERS], choices=list(CONTENDERS))
    p.add_argument("--loads", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    p.add_argument("--threads", type=int, default=available_cpus())
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--latency-texts", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cold", type=int, default=3)
    p.add_argument("--skip-fresh", action="store_true")
    p.add_argument("--no-real-weights", action="store_true", help="only the reference checkpoint")
    p.add_argument("--work", default="artifacts/bench")
    p.add_argument("--json", help="write every raw figure here")
    p.add_argument("--table", help="print the table of an earlier run's JSON and stop")
    p.add_argument("--chart", help="draw the throughput chart (PNG) of this run, or of --table's")
    args = p.parse_args(argv)
    if args.table:
        earlier = json.loads(Path(args.table).read_text(encoding="utf-8"))
        print(markdown(earlier))
        if args.chart:
            chart(earlier, Path(args.chart))
        return 0
    args.contenders = available(args.contenders)
    args.rebuild = False
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    arts = prepare(args, work)
    texts, source = _texts(args.corpus, args.texts)
    results: dict[str, Any] = {
        "machine": machine.describe(),
        "threads": args.threads,
        "corpus": source,
        "batch": args.batch,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sections": {},
    }
    for name, art in arts.items():
        results["sections"][name] = _section(art.label, art, args.contenders, texts, args, work)
    if not args.skip_fresh:
        results["import_floor_s"] = import_floor(max(args.cold, 5))
        print(
            f"  import numpy, tokenizers, onnxruntime in a fresh process: {results['import_floor_s']:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    results["elapsed_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(markdown(results))
    if args.chart:
        chart(results, Path(args.chart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
