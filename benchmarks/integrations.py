"""What the integrations cost over calling flare_onnx directly, and what each extra installs.

    python -m benchmarks.integrations --tagger TAGGER_BUNDLE --embedder EMBED_BUNDLE --json out.json

Interleaved rounds (medians) over the same 1,000 Italian texts (``--texts``: one a line; by
default pieces of the shipped sample):

* spaCy: ``nlp.pipe(texts, batch_size=64)`` with the ``flare_onnx`` component against
  ``model.tag`` on the same batches (the difference is spaCy's tokenizer, Doc building and
  the offset alignment);
* Chroma: ``collection.add`` of the texts into a fresh ``PersistentClient`` collection against
  ``model.embed`` on the same batches (the difference is Chroma's index and storage);
* LangChain: ``FlareEmbeddings.embed_documents`` against ``model.embed``.

Install sizes: the distributions each extra adds to a runtime-only environment, summed from
the installed files' sizes (``importlib.metadata``), in MB.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXTRAS = ("spacy", "langchain", "chroma", "spark")


def _texts(path: str | None, n: int) -> list[str]:
    if path:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        return lines[:n]
    from flare_onnx_export import italian_sentences

    words = " ".join(italian_sentences()).split()
    rng = random.Random(3)
    return [" ".join(words[s : s + rng.randint(5, 40)]) for s in (rng.randrange(len(words) - 40) for _ in range(n))]


def _batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Installed distributions ``name[extras]`` pulls in (markers for this platform honoured)."""
    from packaging.requirements import Requirement

    dists: set[str] = set()
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        key = dist_name.lower().replace("_", "-")
        if (key, wanted) in visited:
            continue
        visited.add((key, wanted))
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        dists.add(key)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                todo.append((r.name, tuple(sorted(r.extras))))
    return dists


def _size_mb(dists: set[str]) -> float:
    total = 0
    for name in dists:
        try:
            files = md.distribution(name).files or []
        except md.PackageNotFoundError:
            continue
        for f in files:
            try:
                total += f.locate().stat().st_size
            except OSError:
                pass
    return total / 1e6


def install_sizes() -> dict[str, Any]:
    """MB each extra adds over ``pip install .`` (the runtime), and the distributions it adds."""
    runtime = _closure("flare-onnx")
    out: dict[str, Any] = {"runtime_mb": round(_size_mb(runtime), 1)}
    for extra in EXTRAS:
        added = _closure("flare-onnx", (extra,)) - runtime
        out[extra] = {"mb": round(_size_mb(added), 1), "distributions": len(added)}
    return out


def _interleave(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        for name in list(contenders) if r % 2 == 0 else list(reversed(contenders)):
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(tagger: str, embedder: str, texts: list[str], rounds: int, batch: int) -> dict[str, Any]:
    import chromadb
    import spacy

    import flare_onnx
    from flare_onnx.integrations.chroma import FlareEmbeddingFunction
    from flare_onnx.integrations.langchain import FlareEmbeddings

    nlp = spacy.blank("it")
    nlp.add_pipe("flare_onnx", config={"bundle": tagger, "window": "truncate"})
    tag_model = nlp.get_pipe("flare_onnx").model
    embed_model = flare_onnx.load(embedder)
    ef = FlareEmbeddingFunction(embed_model)
    lc = FlareEmbeddings(embed_model)
    work = Path(tempfile.mkdtemp(prefix="flare-integrations-"))
    client = chromadb.PersistentClient(str(work / "chroma"))
    ids = [str(i) for i in range(len(texts))]
    counter = iter(range(10**6))

    def chroma_add() -> None:
        col = client.create_collection(f"run{next(counter):04d}", embedding_function=ef)
        for i in range(0, len(texts), batch):
            col.add(ids=ids[i : i + batch], documents=texts[i : i + batch])

    contenders = {
        "tag_direct": lambda: [tag_model.tag(b, window="truncate") for b in _batches(texts, batch)],
        "spacy_pipe": lambda: list(nlp.pipe(texts, batch_size=batch)),
        "spacy_tokenizer_only": lambda: [nlp.make_doc(t) for t in texts],
        "embed_direct": lambda: [embed_model.embed(b) for b in _batches(texts, batch)],
        "chroma_add": chroma_add,
        "langchain_embed_documents": lambda: [lc.embed_documents(b) for b in _batches(texts, batch)],
    }
    for fn in contenders.values():  # warm-up
        fn()
    seconds = _interleave(contenders, rounds)
    return {
        "seconds": seconds,
        "spacy_over_direct": seconds["spacy_pipe"] / seconds["tag_direct"],
        "chroma_over_direct": seconds["chroma_add"] / seconds["embed_direct"],
        "langchain_over_direct": seconds["langchain_embed_documents"] / seconds["embed_direct"],
    }


def render(result: dict[str, Any]) -> str:
    s = result["seconds"]
    n = result["texts"]
    rows = [
        "| what | seconds (median) | over flare_onnx directly |",
        "|---|---|---|",
        f"| `model.tag`, batches of {result['batch']} | {s['tag_direct']:.2f} | 1.00× |",
        f"| spaCy `nlp.pipe` with the component | {s['spacy_pipe']:.2f} | {result['spacy_over_direct']:.2f}× |",
        f"| (spaCy's tokenizer alone) | {s['spacy_tokenizer_only']:.2f} | |",
        f"| `model.embed`, batches of {result['batch']} | {s['embed_direct']:.2f} | 1.00× |",
        f"| Chroma `collection.add` of {n} | {s['chroma_add']:.2f} | {result['chroma_over_direct']:.2f}× |",
        f"| LangChain `embed_documents` | {s['langchain_embed_documents']:.2f} "
        f"| {result['langchain_over_direct']:.2f}× |",
    ]
    sizes = result["install"]
    rows += ["", "| extra | adds (MB) | distributions |", "|---|---|---|"]
    rows += [f"| `{e}` | {sizes[e]['mb']:.0f} | {sizes[e]['distributions']} |" for e in EXTRAS]
    rows.append(f"\nRuntime alone (`pip install .`): {sizes['runtime_mb']:.0f} MB. CPU: {result['machine']['cpu']}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.integrations", description=__doc__.split("\n\n")[0])
    p.add_argument("--tagger", required=True, help="a tagging bundle (UPOS or NER)")
    p.add_argument("--embedder", required=True, help="a bundle that embeds")
    p.add_argument("--texts", help="one text a line (default: 1,000 pieces of the shipped Italian sample)")
    p.add_argument("-n", type=int, default=1000, help="texts (default 1000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", help="where to write the results")
    args = p.parse_args(argv)
    from .machine import describe

    texts = _texts(args.texts, args.n)
    result = measure(args.tagger, args.embedder, texts, args.rounds, args.batch)
    machine = describe()
    result.update(
        texts=len(texts),
        batch=args.batch,
        rounds=args.rounds,
        tagger=args.tagger,
        embedder=args.embedder,
        install=install_sizes(),
        machine={"cpu": machine.get("cpu") or machine.get("model"), **machine},
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
