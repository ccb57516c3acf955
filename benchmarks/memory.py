"""What holds the memory, and the cold start, of a process serving batches:
``python -m benchmarks.memory BUNDLE [--corpus FILE] [--json OUT]``.

One fresh interpreter per setting, resident memory (VmRSS) and the time each stage took: the
imports onnxruntime needs (numpy, tokenizers, onnxruntime), ``import flare_onnx``, ``load()``,
the first embedding, and length-sorted batches of 32 over the texts; the peak (VmHWM) at the
end. Settings: ``max_batch_tokens`` (tokens per engine call; the activations' share) and the
memory arena.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .worker import status_mb

STAGES = (
    "python",
    "numpy + tokenizers + onnxruntime",
    "import flare_onnx",
    "load()",
    "first embedding",
    "batches of 32",
)


def _status(field: str) -> float:
    value = status_mb(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field} (benchmarks.memory needs Linux)")
    return value


def child(bundle: str, texts_file: str, max_batch_tokens: int, arena: bool, threads: int) -> dict[str, Any]:
    rss, clock = [_status("VmRSS")], [time.perf_counter()]

    def stage() -> None:
        rss.append(_status("VmRSS"))
        clock.append(time.perf_counter())

    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    stage()
    import flare_onnx

    stage()
    model = flare_onnx.load(bundle, precision="int8", threads=threads, max_batch_tokens=max_batch_tokens, arena=arena)
    stage()
    texts = sorted(json.loads(Path(texts_file).read_text(encoding="utf-8")), key=len)
    model.embed(texts[:1])
    stage()
    for start in range(0, len(texts), 32):
        model.embed(texts[start : start + 32])
    stage()
    seconds = [0.0] + [b - a for a, b in zip(clock, clock[1:])]
    return {"rss_mb": dict(zip(STAGES, rss)), "seconds": dict(zip(STAGES, seconds)), "peak_mb": _status("VmHWM")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--corpus", help="Italian text, one sentence per line or CoNLL-U (default: the shipped sample)")
    p.add_argument("--texts", type=int, default=480)
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="max_batch_tokens settings")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per setting (medians)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="artifacts/bench")
    p.add_argument("--json")
    p.add_argument("--child", nargs=4, metavar=("TEXTS", "TOKENS", "ARENA", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        texts_file, tokens, arena, threads = args.child
        print(json.dumps(child(args.bundle, texts_file, int(tokens), arena == "1", int(threads))))
        return 0
    from .__main__ import _texts
    from .workloads import compile_bytecode

    compile_bytecode()  # the children start from .pyc files, as an installed package does

    texts, source = _texts(args.corpus, args.texts)
    texts_file = Path(args.work) / "texts-memory.json"
    texts_file.parent.mkdir(parents=True, exist_ok=True)
    texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    settings = [(t, True) for t in args.tokens] + [(args.tokens[-1], False)]
    rows = []
    for tokens, arena in settings:
        runs = []
        for _ in range(args.runs):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.memory",
                    args.bundle,
                    "--child",
                    str(texts_file),
                    str(tokens),
                    "1" if arena else "0",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parents[1],
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {
            "max_batch_tokens": tokens,
            "arena": arena,
            "rss_mb": {s: statistics.median(r["rss_mb"][s] for r in runs) for s in STAGES},
            "seconds": {s: statistics.median(r["seconds"][s] for r in runs) for s in STAGES},
            "peak_mb": statistics.median(r["peak_mb"] for r in runs),
        }
        rows.append(row)
    print(
        f"{args.bundle}, {len(texts)} texts ({source}), {args.threads} threads; resident MB after each stage, "
        f"medians of {args.runs} fresh processes\n"
    )
    head = ["max_batch_tokens", "arena", *STAGES, "peak"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['max_batch_tokens']:,}", "on" if r["arena"] else "off"]
        cells += [f"{r['rss_mb'][s]:.0f}" for s in STAGES] + [f"**{r['peak_mb']:.0f}**"]
        print("| " + " | ".join(cells) + " |")
    first = next((r for r in rows if r["max_batch_tokens"] == 1024 and r["arena"]), rows[0])  # the defaults
    print(
        f"\nseconds per stage (max_batch_tokens {first['max_batch_tokens']:,}; "
        f"python: not measured, before the script): " + ", ".join(f"{s} {first['seconds'][s]:.3f}" for s in STAGES[1:])
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"bundle": args.bundle, "corpus": source, "texts": len(texts), "threads": args.threads, "rows": rows},
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
