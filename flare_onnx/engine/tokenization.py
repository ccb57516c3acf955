"""Tokenization, windows over long texts, and length-sorted batches under a token budget.

This is where padding happens: texts are encoded without special tokens, cut into windows of
at most ``max_length`` tokens (``<s> … </s>`` added here), sorted by length and grouped so
that ``batch_size × padded_length`` stays under a token budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from .bundle import SpecialTokens
from ..errors import InputError

__all__ = ["TextEncoder", "Window", "plan_batches", "pad_batch", "check_texts"]


def check_texts(texts: object, *, verb: str) -> list[str]:
    """Validate a batch of texts and return it as a list.

    Raises:
        InputError: not a list of non-empty strings that are valid Unicode.
    """
    if isinstance(texts, str):
        raise InputError(f"{verb}() takes a list of texts, not a single string: use {verb}([text])")
    if not isinstance(texts, Sequence):
        raise InputError(f"{verb}() takes a list of strings, not {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError(f"{verb}() got an empty list of texts; pass at least one text")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InputError(f"text {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise InputError(f"text {i} is empty or only whitespace")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"text {i} is not valid Unicode: {exc.reason} at character {exc.start}"
            ) from exc
    return out


@dataclass(frozen=True)
class Window:
    """A span of one text's tokens, ready for the model (special tokens included).

    ``ids`` has ``<s>`` first and ``</s>`` last; content token ``j`` of the window is token
    ``start + j`` of the text's encoding. ``keep`` is the range of content positions this
    window is trusted for when windows overlap (the tokens farthest from its edges).
    """

    text_index: int
    ids: np.ndarray
    start: int
    keep: tuple[int, int]


class TextEncoder:
    """Owns the ``tokenizers`` tokenizer and turns texts into windows of token ids."""

    def __init__(self, tokenizer_json: str, special: SpecialTokens, *, max_length: int) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.special = special
        self.max_length = max_length

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def id_to_token(self, token_id: int) -> str:
        token = self._tokenizer.id_to_token(token_id)
        return token if token is not None else ""

    def encode(self, texts: list[str]) -> list[Encoding]:
        """Encodings of ``texts`` without special tokens, offsets into the original strings."""
        try:
            encodings: list[Encoding] = self._tokenizer.encode_batch(texts, add_special_tokens=False)
            return encodings
        except Exception as exc:  # the Rust tokenizer raises untyped exceptions
            raise InputError(f"the tokenizer could not encode the input: {exc}") from exc

    def windows(
        self, encodings: list[Encoding], *, sliding: bool, stride: int
    ) -> list[Window]:
        """Cut each encoding into model-sized windows.

        Args:
            sliding: cover the whole text with overlapping windows; otherwise keep the first
                window only (truncation).
            stride: tokens shared by consecutive windows when ``sliding``.
        """
        content = self.max_length - 2
        if sliding and not 0 <= stride < content:
            raise InputError(f"stride must be between 0 and {content - 1}, not {stride}")
        out: list[Window] = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            n = len(ids)
            if n == 0:
                raise InputError(f"text {i} has no tokens after normalization")
            starts = [0]
            if sliding and n > content:
                step = content - stride
                starts = list(range(0, n - content, step)) + [n - content]
            for w, s in enumerate(starts):
                e = min(n, s + content)
                # Overlapping tokens belong to the window where they sit farther from an edge.
                lo = 0 if w == 0 else (starts[w - 1] + content + s) // 2 - s
                hi = e - s if w == len(starts) - 1 else (e + starts[w + 1]) // 2 - s
                window_ids = np.empty(e - s + 2, dtype=np.int64)
                window_ids[0] = self.special.cls_id
                window_ids[1:-1] = ids[s:e]
                window_ids[-1] = self.special.sep_id
                out.append(Window(text_index=i, ids=window_ids, start=s, keep=(lo, hi)))
        return out


#: What one more session call costs, in padded tokens: the fixed price a batch pays (measured on
#: the reference graph: 32–128 tokens cost about the same; 0 would favour many tiny batches).
BATCH_OVERHEAD_TOKENS = 64


def plan_batches(
    lengths: Sequence[int], *, max_tokens: int, max_batch: int, max_cells: int | None = None
) -> Iterator[list[int]]:
    """Group indices into length-sorted batches with ``len(batch) × max_len ≤ max_tokens``
    and, when given, ``len(batch) × max_len² ≤ max_cells`` (attention scores grow with the
    square of the length, so long texts get smaller batches).

    Among the ways to cut the sorted texts into such batches, this takes the one with the
    fewest padded tokens plus :data:`BATCH_OVERHEAD_TOKENS` per batch (dynamic programming,
    ``len × max_batch`` steps): a greedy cut pads a whole batch to its longest text, which on
    64 sentences of mixed length cost ~20% of the throughput. A single sequence over the
    budgets still gets a batch of its own.
    """
    if max_tokens < 1 or max_batch < 1:
        raise InputError("max_tokens and max_batch must be positive")
    cells = max_cells if max_cells is not None else float("inf")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: the cheapest plan for the i shortest texts
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = sorted_lengths[i - 1]
        for size in range(1, min(max_batch, i) + 1):
            if size > 1 and (size * longest > max_tokens or size * longest * longest > cells):
                break
            cost = best[i - size] + size * longest + BATCH_OVERHEAD_TOKENS
            if cost < best[i]:
                best[i], cut[i] = cost, i - size
    bounds = []
    i = n
    while i > 0:
        bounds.append((cut[i], i))
        i = cut[i]
    for lo, hi in reversed(bounds):
        yield order[lo:hi]


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64 sequences into ``input_ids`` and ``attention_mask`` arrays."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return ids, mask
