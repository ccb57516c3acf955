"""Fine-tuned Italian tagging heads, PyTorch FP32 against flare-onnx FP32 and INT8.

    python -m benchmarks.tagging --encoder DIR --scheme upos \
        --train ISDT-dev.conllu --test ISDT-test.conllu --json pos.json
    python -m benchmarks.tagging --encoder DIR --scheme ner --train wikineural-it/val.conllu --json ner.json

Fine-tunes a token-classification head on ``--encoder`` (any BERT / XLM-R checkpoint with a
fast tokenizer: WordPiece like flare-it, or SentencePiece like multilingual-e5-small) on the
training file, exports it with flare-onnx (FP32 and INT8 graphs, calibrated on the training
text), and scores the same test words three ways: the fine-tuned PyTorch FP32 model, and
``FlareModel.tag()`` on the FP32 and INT8 graphs — the runtime's own words and character
offsets, matched to the gold words by position. Reported: token-level macro precision, recall
and F1 over the labels (the model card's metric), accuracy, for NER entity-level
(seqeval, conlleval-style exact spans) precision/recall/F1, and how often the INT8 labels
agree with the FP32 ones. Without ``--test`` the training file is split (seeded) into a
training and a test part.

Texts are the gold words joined by single spaces (UD's syntactic words: ``della`` appears as
``di la``), so every tokenizer sees the same words; a word's label is its first token's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Sentence = tuple[str, list[tuple[int, int]], list[str]]  # text, word spans, tags
SCHEMES = ("upos", "ner")
MODEL_CARD = {"upos": {"f1": 95.45, "data": "UD Italian-ISDT"}, "ner": {"f1": 81.29, "data": "WikiNER"}}


def _sentence(words: list[tuple[str, str]]) -> Sentence:
    text, spans, pos = "", [], 0
    for form, _ in words:
        spans.append((pos, pos + len(form)))
        text += form + " "
        pos += len(form) + 1
    return text[:-1], spans, [t for _, t in words]


def read_conllu(path: str | Path) -> list[Sentence]:
    """UD CoNLL-U with UPOS: syntactic words (multi-word ranges and empty nodes skipped)."""
    return _read(path, lambda cols: (cols[1], cols[3]) if cols[0].isdigit() else None)


def read_conll_ner(path: str | Path) -> list[Sentence]:
    """CoNLL NER (WikiNEuRal: ``index word tag``, or ``word tag``): the word and its IOB2 tag."""
    return _read(path, lambda cols: (cols[-2], cols[-1]) if len(cols) >= 2 else None)


def _read(path: str | Path, pick: Callable[[list[str]], tuple[str, str] | None]) -> list[Sentence]:
    out: list[Sentence] = []
    words: list[tuple[str, str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                out.append(_sentence(words))
                words = []
        elif not line.startswith("#"):
            word = pick(line.split("\t") if "\t" in line else line.split())
            if word and word[0]:
                words.append(word)
    return out


def read(path: str | Path, scheme: str) -> list[Sentence]:
    return read_conllu(path) if scheme == "upos" else read_conll_ner(path)


def split(sentences: list[Sentence], test_fraction: float, seed: int) -> tuple[list[Sentence], list[Sentence]]:
    """A seeded shuffle cut into (train, test)."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(order) * (1 - test_fraction)))
    return [sentences[i] for i in sorted(order[:cut])], [sentences[i] for i in sorted(order[cut:])]


def word_of(starts: Sequence[int], ends: Sequence[int], span: tuple[int, int]) -> int | None:
    """Index of the first item (sorted by start) that overlaps ``span``, or None."""
    i = max(bisect_right(starts, span[0]) - 1, 0)
    while i < len(starts) and starts[i] < span[1]:
        if ends[i] > span[0]:
            return i
        i += 1
    return None


def first_token_labels(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], tags: Sequence[int]
) -> list[int]:
    """A label for the first token of each word, -100 (ignored by the loss) everywhere else."""
    labels = [-100] * len(offsets)
    real = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]
    starts, ends = [a for _, a, _ in real], [b for _, _, b in real]
    for span, tag in zip(spans, tags):
        j = word_of(starts, ends, span)
        if j is not None and labels[real[j][0]] == -100:
            labels[real[j][0]] = tag
    return labels


def macro_prf(gold: list[str], pred: list[str], labels: Sequence[str]) -> dict[str, float]:
    """Token-level macro precision/recall/F1 over the labels present in gold or predictions."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    present = [label for label in labels if label in set(gold) | set(pred)]
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=present, average="macro", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f), "accuracy": float(accuracy_score(gold, pred))}


def entity_prf(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level (exact span and type) precision/recall/F1, conlleval-style, by seqeval."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    pred = [[t if t != "X" else "O" for t in sent] for sent in pred]
    return {
        "entity_precision": float(precision_score(gold, pred, zero_division=0)),
        "entity_recall": float(recall_score(gold, pred, zero_division=0)),
        "entity_f1": float(f1_score(gold, pred, zero_division=0)),
    }


def fine_tune(
    encoder_dir: str | Path,
    train: list[Sentence],
    out_dir: Path,
    *,
    epochs: int,
    threads: int,
    lr: float = 1e-4,
    batch_size: int = 16,
    freeze_embeddings: bool = True,
    max_length: int = 256,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune a token-classification head (and the encoder, embeddings frozen by default)."""
    import torch
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" note is the point here
    labels = sorted({t for _, _, tags in train for t in tags})
    label_ids = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = AutoModelForTokenClassification.from_pretrained(
        str(encoder_dir), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )
    if freeze_embeddings:  # a 250k-row table is most of e5's weights: training it is slow, and little data moves it
        model.base_model.embeddings.requires_grad_(False)
    ids, targets = [], []
    for text, spans, tags in train:
        enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
        ids.append(enc["input_ids"])
        targets.append(first_token_labels(enc["offset_mapping"], spans, [label_ids[t] for t in tags]))
    pad = tok.pad_token_id
    order = list(range(len(ids)))
    steps = epochs * ((len(ids) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps)
    )
    rng = random.Random(seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), width), pad)
            y = torch.full((len(chunk), width), -100)
            for row, i in enumerate(chunk):
                x[row, : len(ids[i])] = torch.tensor(ids[i])
                y[row, : len(ids[i])] = torch.tensor(targets[i])
            loss = model(input_ids=x, attention_mask=(x != pad).long(), labels=y).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            total += loss.item()
        batches = (len(order) + batch_size - 1) // batch_size
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / batches:.3f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def gold_word_labels(test: list[Sentence], words_per_text: list[list[Any]]) -> list[list[str]]:
    """Each gold word's predicted label: the label of the runtime word that overlaps its start."""
    out = []
    for (_, spans, _), words in zip(test, words_per_text):
        starts, ends = [w.start for w in words], [w.end for w in words]
        row = []
        for span in spans:
            j = word_of(starts, ends, span)
            row.append(words[j].label if j is not None else "X")
        out.append(row)
    return out


def evaluate(model_dir: Path, bundle: Path, test: list[Sentence], *, scheme: str, threads: int) -> dict[str, Any]:
    """Score PyTorch FP32, flare-onnx FP32 and INT8 on the same gold words."""
    import torch
    from transformers import AutoModelForTokenClassification

    import flare_onnx
    from flare_onnx.engine.postprocess import aggregate_words, softmax

    torch.set_num_threads(threads)
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    texts = [t for t, _, _ in test]
    gold = [tags for _, _, tags in test]

    fast = flare_onnx.load(bundle, precision="fp32", threads=threads)
    special, keep = fast.manifest.special, fast.manifest.max_length - 2
    torch_words = []
    with torch.inference_mode():  # the runtime's tokens and words, PyTorch's numbers
        for text, enc in zip(texts, fast.tokenizer.encode(texts)):
            ids = [special.cls_id] + enc.ids[:keep] + [special.sep_id]
            t = torch.tensor([ids])
            logits = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, 1:-1].numpy()
            n = len(ids) - 2
            torch_words.append(aggregate_words(text, softmax(logits), enc.word_ids[:n], enc.offsets[:n], labels))
    preds = {"pytorch_fp32": gold_word_labels(test, torch_words)}
    timings = {}
    for precision in ("fp32", "int8"):
        m = fast if precision == "fp32" else flare_onnx.load(bundle, precision=precision, threads=threads)
        t0 = time.perf_counter()
        preds[f"flare_{precision}"] = gold_word_labels(test, [r.words for r in m.tag(texts)])
        timings[f"flare_{precision}"] = time.perf_counter() - t0
    flat_gold = [t for row in gold for t in row]
    results: dict[str, Any] = {"test_sentences": len(test), "test_words": len(flat_gold), "labels": labels}
    for key, pred in preds.items():
        flat = [t for row in pred for t in row]
        scores = macro_prf(flat_gold, flat, labels)
        if scheme == "ner":
            scores.update(entity_prf(gold, pred))
        scores["agreement_with_pytorch_fp32"] = float(
            np.mean(np.array(flat) == np.array([t for row in preds["pytorch_fp32"] for t in row]))
        )
        if key in timings:
            scores["tag_seconds"] = timings[key]
        results[key] = scores
    results["int8_fp32_agreement"] = float(
        np.mean(
            np.array([t for r in preds["flare_int8"] for t in r])
            == np.array([t for r in preds["flare_fp32"] for t in r])
        )
    )
    return results


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from flare_onnx_export import export_bundle

    train = read(args.train, args.scheme)
    if args.test:
        test = read(args.test, args.scheme)
    else:
        train, test = split(train, args.test_fraction, args.seed)
    if args.max_train:
        train = train[: args.max_train]
    if args.max_test:
        test = test[: args.max_test]
    if not train or not test:
        raise SystemExit(f"no sentences read from {args.train}{' / ' + args.test if args.test else ''}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="flare-tagging-"))
    reuse = args.reuse_model and (work / "model" / "config.json").exists()
    log(f"== {args.scheme}: " + (f"reusing {work / 'model'}" if reuse else
        f"fine-tuning {args.encoder} on {len(train)} sentences for {args.epochs} epochs"))  # fmt: skip
    t0 = time.perf_counter()
    model_dir = (
        work / "model"
        if reuse
        else fine_tune(
            args.encoder,
            train,
            work / "model",
            epochs=args.epochs,
            threads=args.threads,
            lr=args.lr,
            freeze_embeddings=not args.train_embeddings,
            seed=args.seed,
            log=log,
        )
    )
    train_s = time.perf_counter() - t0
    calibration = work / "calibration.txt"
    calibration.write_text("\n".join(t for t, _, _ in train[:1000]) + "\n", encoding="utf-8")
    log("== exporting FP32 and INT8 graphs")
    bundle = export_bundle(
        str(model_dir),
        work / "bundle",
        overwrite=True,
        calibration=str(calibration),
        fidelity=args.fidelity,
        activations=args.activations,
        weight_rounding=args.weight_rounding,
        log=lambda _: None,
    )
    log(f"== scoring {len(test)} test sentences")
    result = evaluate(model_dir, bundle, test, scheme=args.scheme, threads=args.threads)
    result.update(
        scheme=args.scheme,
        encoder=str(args.encoder),
        train=str(args.train),
        test=str(args.test or f"{args.train} (split)"),
        train_sentences=len(train),
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        embeddings_frozen=not args.train_embeddings,
        fine_tune_seconds=train_s,
        reused_model=bool(reuse),
        bundle=str(bundle),
        fidelity=args.fidelity,
        activations=args.activations,
        weight_rounding=args.weight_rounding,
        model_card={**MODEL_CARD[args.scheme], "model": "osiria/flare-it, FP32 PyTorch (a different encoder)"},
    )
    return result


def render(result: dict[str, Any]) -> str:
    ner = result["scheme"] == "ner"
    head = "| | macro P | macro R | macro F1 | accuracy |" + (" entity F1 |" if ner else "") + " agrees with PyTorch |"
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for key in ("pytorch_fp32", "flare_fp32", "flare_int8"):
        s = result[key]
        cells = [f"{100 * s[m]:.2f}" for m in ("precision", "recall", "f1", "accuracy")]
        if ner:
            cells.append(f"{100 * s['entity_f1']:.2f}")
        rows.append(f"| {key} | " + " | ".join(cells) + f" | {100 * s['agreement_with_pytorch_fp32']:.2f}% |")
    card = result["model_card"]
    rows.append(
        f"\nINT8 labels = FP32 labels on {100 * result['int8_fp32_agreement']:.2f}% of {result['test_words']} words. "
        f"Model card (osiria/flare-it, FP32, {card['data']}): F1 {card['f1']} — a different encoder."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tagging", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="checkpoint directory to fine-tune (BERT / XLM-R, fast tokenizer)")
    p.add_argument("--scheme", required=True, choices=SCHEMES, help="upos: CoNLL-U UPOS column; ner: CoNLL IOB2 tags")
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--test", help="test file (default: a seeded split of --train)")
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share when --test is absent (default 0.2)")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training sentences")
    p.add_argument("--max-test", type=int, default=None, help="score the first N test sentences")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--train-embeddings", action="store_true", help="also train the embedding table (slow; frozen by default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="directory for the fine-tuned checkpoint and bundle (default: a temporary one)")
    p.add_argument(
        "--fidelity", choices=["fast", "balanced", "faithful"], default="fast", help="the export's INT8 preset"
    )
    p.add_argument(
        "--activations", choices=["per-row", "per-tensor"], default="per-row", help="the export's INT8 activations"
    )
    p.add_argument(
        "--weight-rounding", choices=["gptq", "nearest"], default="gptq", help="the export's INT8 weight rounding"
    )
    p.add_argument(
        "--reuse-model",
        action="store_true",
        help="with --work: score the checkpoint an earlier run fine-tuned there (same data and seed) with this "
        "run's export options, instead of fine-tuning again",
    )
    args = p.parse_args(argv)
    for path in (args.encoder, args.train, args.test):
        if path and not Path(path).exists():
            p.error(f"{path} does not exist")
    missing = [m for m in ("seqeval", "sklearn", "torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:  # checked before 20-40 minutes of fine-tuning, not at scoring time
        p.error(f'{", ".join(missing)} not installed: pip install ".[bench]" (seqeval brings scikit-learn)')
    result = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
