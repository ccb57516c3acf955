"""PoS tagging on UD Italian-ISDT, as in the Flare-IT model card: fine-tune a UPOS head on the
dev set on the CPU, export it, and score PyTorch FP32, flare-onnx FP32 and INT8 on the test set
(token level, macro-averaged precision / recall / F1 over the UPOS tags)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

Sentence = tuple[str, list[tuple[int, int]], list[str]]  # text, word spans, UPOS tags


def read_conllu(path: str | Path) -> list[Sentence]:
    """Syntactic words (multi-word ranges and empty nodes skipped) joined by spaces."""
    out: list[Sentence] = []
    words: list[tuple[str, str]] = []
    for line in list(Path(path).read_text(encoding="utf-8").splitlines()) + [""]:
        if not line:
            if words:
                text, spans, pos = "", [], 0
                for form, _ in words:
                    spans.append((pos, pos + len(form)))
                    text += form + " "
                    pos += len(form) + 1
                out.append((text[:-1], spans, [t for _, t in words]))
                words = []
        elif not line.startswith("#"):
            cols = line.split("\t")
            if cols[0].isdigit():
                words.append((cols[1], cols[3]))
    return out


def macro_prf(gold: list[str], pred: list[str], labels: list[str]) -> dict[str, float]:
    p, r, f = [], [], []
    g, q = np.array(gold), np.array(pred)
    for label in labels:
        tp = int(((g == label) & (q == label)).sum())
        fp = int(((g != label) & (q == label)).sum())
        fn = int(((g == label) & (q != label)).sum())
        if tp + fp + fn == 0:
            continue
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        p.append(prec)
        r.append(rec)
        f.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {"precision": float(np.mean(p)), "recall": float(np.mean(r)), "f1": float(np.mean(f)), "accuracy": float((g == q).mean())}


def _first_token_labels(tok: Any, sentences: list[Sentence], label_ids: dict[str, int], max_length: int = 256):
    import torch

    batch_ids, batch_labels = [], []
    for text, spans, tags in sentences:
        enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
        starts = {s: label_ids[t] for (s, _), t in zip(spans, tags)}
        labels, seen = [], set()
        for (a, b) in enc["offset_mapping"]:
            if b > a and a in starts and a not in seen:
                labels.append(starts[a])
                seen.add(a)
            else:
                labels.append(-100)
        batch_ids.append(enc["input_ids"])
        batch_labels.append(labels)
    return batch_ids, batch_labels, torch


def fine_tune(encoder_dir: str | Path, train: list[Sentence], out_dir: Path, *, epochs: int, threads: int, log=print) -> Path:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    labels = sorted({t for _, _, tags in train for t in tags})
    label_ids = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = AutoModelForTokenClassification.from_pretrained(
        str(encoder_dir), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )
    ids, targets, _ = _first_token_labels(tok, train, label_ids)
    pad = tok.pad_token_id
    order = list(range(len(ids)))
    batch_size = 16
    steps = epochs * ((len(ids) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    rng = random.Random(0)
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
            total += float(loss)
        log(f"  PoS fine-tuning epoch {epoch + 1}/{epochs}: loss {total / (len(order) / batch_size):.3f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return out_dir


def evaluate(model_dir: Path, bundle: Path, test: list[Sentence], *, threads: int) -> dict[str, Any]:
    """Macro P/R/F1 of PyTorch FP32, flare-onnx FP32 and INT8 on the same words."""
    import torch
    from transformers import AutoModelForTokenClassification

    import flare_onnx
    from flare_onnx.postprocess import aggregate_words, softmax

    torch.set_num_threads(threads)
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    gold = [t for _, _, tags in test for t in tags]
    texts = [t for t, _, _ in test]

    def align(words_per_text: list[list[Any]]) -> list[str]:
        pred = []
        for (_, spans, _), words in zip(test, words_per_text):
            by_start = {w.start: w.label for w in words}
            pred += [by_start.get(s, "X") for s, _ in spans]
        return pred

    fast = flare_onnx.load(bundle, precision="fp32", threads=threads)
    torch_words = []
    with torch.inference_mode():
        for text, enc in zip(texts, fast.tokenizer.encode(texts)):
            ids = [fast.manifest.special.cls_id] + enc.ids[:510] + [fast.manifest.special.sep_id]
            t = torch.tensor([ids])
            logits = model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, 1:-1].numpy()
            n = len(ids) - 2
            torch_words.append(aggregate_words(text, softmax(logits), enc.word_ids[:n], enc.offsets[:n], labels))
    results: dict[str, Any] = {"test_words": len(gold), "labels": labels}
    preds = {"torch-fp32": align(torch_words)}
    for precision in ("fp32", "int8"):
        m = flare_onnx.load(bundle, precision=precision, threads=threads)
        preds[f"flare-{precision}"] = align([r.words for r in m.tag(texts)])
    for key, pred in preds.items():
        results[key] = macro_prf(gold, pred, labels)
        results[key]["agreement_with_torch"] = float(np.mean(np.array(pred) == np.array(preds["torch-fp32"])))
    return results
