"""Pure numpy post-processing: pooling, normalisation, softmax, top-k, words and entities.

Nothing here touches a session or a tokenizer, so every function is testable on small arrays.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = [
    "softmax",
    "class_scores",
    "top_k",
    "WindowPool",
    "l2_normalize",
    "aggregate_words",
    "group_entities",
    "WordLabel",
    "Entity",
    "AGGREGATIONS",
]

AGGREGATIONS = ("first", "average", "max")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    x = logits.astype(np.float32)  # a copy: the caller's array is left alone
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def class_scores(logits: np.ndarray, function: str) -> np.ndarray:
    """Logits to scores: ``"softmax"`` over labels, ``"sigmoid"`` per label, or ``"none"``."""
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        x = logits.astype(np.float32)
        out: np.ndarray = (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # no overflow
        return out
    return logits.astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest entries of each row, largest first."""
    k = min(k, scores.shape[-1])
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(scores, part, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1), np.take_along_axis(vals, order, axis=-1)


class WindowPool:
    """Pools hidden states into one vector per text, over one or more windows per text.

    Mean pooling averages every token of the text exactly once (``<s>``/``</s>`` included,
    as sentence-transformers does): each window contributes the content tokens it owns
    (``keep``, where overlapping windows split their shared tokens) plus ``<s>`` if it is the
    text's first window and ``</s>`` if it is the last. CLS pooling averages the windows'
    ``<s>`` vectors. Max pooling takes each dimension's largest value over the same tokens as
    mean pooling (sentence-transformers' ``pooling_mode_max_tokens``).
    """

    def __init__(self, texts: int, hidden_size: int) -> None:
        self._sums = np.zeros((texts, hidden_size), dtype=np.float64)
        self._counts = np.zeros(texts, dtype=np.int64)
        self._cls = np.zeros((texts, hidden_size), dtype=np.float64)
        self._windows = np.zeros(texts, dtype=np.int64)
        self._max = np.full((texts, hidden_size), -np.inf, dtype=np.float32)

    def add(self, text: int, hidden: np.ndarray, keep: tuple[int, int]) -> None:
        """Add one window: ``hidden`` is its ``[length, hidden_size]`` states, specials included."""
        n = hidden.shape[0]
        lo, hi = keep
        owned = [hidden[1 + lo : 1 + hi]]
        if lo == 0:
            owned.append(hidden[:1])
        if hi == n - 2:
            owned.append(hidden[n - 1 :])
        for rows in owned:
            if len(rows):
                self._sums[text] += rows.sum(axis=0, dtype=np.float64)
                self._counts[text] += len(rows)
                np.maximum(self._max[text], rows.max(axis=0), out=self._max[text])
        self._cls[text] += hidden[0]
        self._windows[text] += 1

    def result(self, pooling: str) -> np.ndarray:
        """``float32 [texts, hidden_size]``: ``"mean"``, ``"max"`` or ``"cls"`` pooled vectors."""
        if pooling == "mean":
            return (self._sums / np.maximum(self._counts, 1)[:, None]).astype(np.float32)
        if pooling == "max":
            return np.where(np.isfinite(self._max), self._max, 0).astype(np.float32)
        return (self._cls / np.maximum(self._windows, 1)[:, None]).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (``[len(a), len(b)]``);
    a single vector counts as one row.

    Example:
        >>> flare_onnx.similarity(model.embed(["ciao"]), model.embed(["salve", "addio"])).shape
        (1, 2)
    """
    x, y = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
    if x.shape[-1] != y.shape[-1]:
        raise InputError(f"vectors of {x.shape[-1]} and {y.shape[-1]} dimensions cannot be compared")
    out: np.ndarray = l2_normalize(x) @ l2_normalize(y).T
    return out


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norm, eps)).astype(np.float32)
    return out


@dataclass(frozen=True)
class WordLabel:
    """The label of one word, with its character span in the original text."""

    word: str
    label: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class Entity:
    """A run of words with the same entity type, with its character span."""

    label: str
    text: str
    score: float
    start: int
    end: int


def aggregate_words(
    text: str,
    probs: np.ndarray,
    word_ids: Sequence[int | None],
    offsets: Sequence[tuple[int, int]],
    labels: Sequence[str],
    *,
    aggregation: str = "first",
) -> list[WordLabel]:
    """Turn per-token label probabilities into one label per word.

    Args:
        text: the original text (offsets index into it).
        probs: ``[tokens, labels]`` probabilities of the text's content tokens.
        word_ids: the word index of each token.
        offsets: the character span of each token.
        labels: label names by id.
        aggregation: ``"first"`` (first sub-token decides), ``"average"`` (mean of the
            sub-tokens' probabilities) or ``"max"`` (the most confident sub-token).
    """
    words: list[WordLabel] = []
    n = len(word_ids)
    pieces = [text[a:b].strip() for a, b in offsets[:n]]
    t = 0
    while t < n:
        w = word_ids[t]
        u = t + 1
        while u < n and word_ids[u] == w and w is not None and not _word_break(pieces[u - 1], pieces[u]):
            u += 1
        span = probs[t:u]
        if aggregation == "first":
            p = span[0]
            best = int(p.argmax())
            score = float(p[best])
        elif aggregation == "average":
            p = span.mean(axis=0)
            best = int(p.argmax())
            score = float(p[best])
        else:
            row = int(span.max(axis=1).argmax())
            best = int(span[row].argmax())
            score = float(span[row, best])
        start, end = offsets[t][0], offsets[u - 1][1]
        # SentencePiece tokens carry the space before them ("▁di" spans " di"): a word's span
        # is its text alone, so that it slices the original text exactly
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        words.append(WordLabel(word=text[start:end], label=labels[best], score=score, start=start, end=end))
        t = u
    return words


_APOSTROPHES = ("'", "\u2019")


def _word_break(before: str, piece: str) -> bool:
    """Whether a new word starts at ``piece`` inside one pre-tokenized word.

    SentencePiece pre-tokenizes at spaces only, so "Bologna." or "dell'Università" would be one
    word (an entity would take the full stop, or be labelled by "dell"). Cut them as Italian
    corpora do: punctuation is a word of its own, except an apostrophe, which stays with the
    elided word before it ("dell'" | "Università", "Dell'" | "Orto"). WordPiece's pre-tokenizer
    has cut at punctuation already, so this only ever splits SentencePiece words.
    """
    if piece in _APOSTROPHES:
        return False
    if before.endswith(_APOSTROPHES):
        return True
    return _is_punctuation(piece) or _is_punctuation(before)


def _is_punctuation(piece: str) -> bool:
    """Punctuation as BERT's pre-tokenizer sees it: Unicode P* characters and ASCII symbols."""
    return bool(piece) and all(
        unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum() and not c.isspace()) for c in piece
    )


def _split_label(label: str) -> tuple[str, str]:
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIESL":
        return label[0], label[2:]
    return "", label


def entity_runs(labels: Sequence[str], *, scheme: str = "bioes", outside: str = "O") -> list[tuple[str, list[int]]]:
    """The one entity-grouping rule: (type, word indices) of each run of labels.

    ``scheme="bioes"`` (what :meth:`FlareModel.tag` uses) reads IOB, IOB2, BIOES and BILOU tags
    and plain labels: a ``B-``/``S-`` tag or a change of type starts an entity, ``E-``/``L-``/``S-``
    ends it, and ``outside`` words belong to none. ``scheme="iob2"`` is transformers'
    token-classification grouping, kept for parity in :func:`flare_onnx.pipeline`: only ``B-``
    starts a run, any other label (``outside`` and BIOES prefixes included) joins the previous run
    of the same type, and ``outside`` words form runs of their own (the pipeline then drops
    ``ignore_labels``).
    """
    if scheme not in ("bioes", "iob2"):
        raise ValueError(f"scheme must be 'bioes' or 'iob2', not {scheme!r}")
    runs: list[tuple[str, list[int]]] = []
    current: tuple[str, list[int]] | None = None
    for i, label in enumerate(labels):
        if scheme == "bioes" and label == outside:
            current = None
            continue
        prefix, kind = _split_label(label) if scheme == "bioes" else _split_iob2(label)
        if current is None or kind != current[0] or prefix in ("B", "S"):
            current = (kind, [i])
            runs.append(current)
        else:
            current[1].append(i)
        if scheme == "bioes" and prefix in ("E", "L", "S"):
            current = None
    return runs


def _split_iob2(label: str) -> tuple[str, str]:
    """transformers' reading: ``B-X`` and ``I-X``; any other label is an ``I`` of its own type."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(text: str, words: Sequence[WordLabel], *, outside: str = "O") -> list[Entity]:
    """Group consecutive words into entities with :func:`entity_runs` (``bioes``); ``outside``
    words are left out."""
    entities = []
    for kind, idx in entity_runs([w.label for w in words], outside=outside):
        run = [words[i] for i in idx]
        start, end = run[0].start, run[-1].end
        score = float(np.mean([w.score for w in run]))
        entities.append(Entity(label=kind, text=text[start:end], score=score, start=start, end=end))
    return entities
