"""What holds the memory of a process serving batches: ``python -m benchmarks.memory BUNDLE
[--corpus FILE] [--json OUT]``.

One fresh interpreter per setting, resident memory (VmRSS) read after each stage: the
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
from pathlib import Path
from typing import Any

STAGES = ("python", "numpy + tokenizers + onnxruntime", "import flare_onnx", "load()", "first embedding", "batches of 32")


def _status(field: str) -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(bundle: str, texts_file: str, max_batch_tokens: int, arena: bool, threads: int) -> dict[str, Any]:
    rss = [_status("VmRSS")]
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    rss.append(_status("VmRSS"))
    import flare_onnx

    rss.append(_status("VmRSS"))
    model = flare_onnx.load(bundle, precision="int8", threads=threads, max_batch_tokens=max_batch_tokens, arena=arena)
    rss.append(_status("VmRSS"))
    texts = sorted(json.loads(Path(texts_file).read_text(encoding="utf-8")), key=len)
    model.embed(texts[:1])
    rss.append(_status("VmRSS"))
    for start in range(0, len(texts), 32):
        model.embed(texts[start : start + 32])
    rss.append(_status("VmRSS"))
    return {"rss_mb": dict(zip(STAGES, rss)), "peak_mb": _status("VmHWM")}


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

    texts, source = _texts(args.corpus, args.texts)
    texts_file = Path(args.work) / "texts-memory.json"
    texts_file.parent.mkdir(parents=True, exist_ok=True)
    texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    settings = [(t, True) for t in args.tokens] + [(args.tokens[-1], False)]
    rows = []
    for tokens, arena in settings:
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory", args.bundle, "--child", str(texts_file),
                                  str(tokens), "1" if arena else "0", str(args.threads)],
                                 capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {"max_batch_tokens": tokens, "arena": arena,
               "rss_mb": {s: statistics.median(r["rss_mb"][s] for r in runs) for s in STAGES},
               "peak_mb": statistics.median(r["peak_mb"] for r in runs)}
        rows.append(row)
    print(f"{args.bundle}, {len(texts)} texts ({source}), {args.threads} threads; resident MB after each stage, "
          f"medians of {args.runs} fresh processes\n")
    head = ["max_batch_tokens", "arena", *STAGES, "peak"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['max_batch_tokens']:,}", "on" if r["arena"] else "off"]
        cells += [f"{r['rss_mb'][s]:.0f}" for s in STAGES] + [f"**{r['peak_mb']:.0f}**"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bundle": args.bundle, "corpus": source, "texts": len(texts),
                                               "threads": args.threads, "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
