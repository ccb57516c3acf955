"""Tokenization and windows over long texts.

Texts are encoded without special tokens and cut into windows of at most ``max_length``
tokens (``<s> … </s>`` added here); :mod:`.batching` sorts and pads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import BundleError, InputError, TextError
from .tokenizer_check import probe_normalizer

__all__ = ["SpecialTokens", "TextEncoder", "Window", "check_texts"]


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens the runtime adds or looks for."""

    cls_id: int
    sep_id: int
    pad_id: int
    unk_id: int
    mask_id: int | None
    mask_token: str | None


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
            raise TextError(i, f"is {type(text).__name__}, not str")
        if not text.strip():
            raise TextError(i, "is empty or only whitespace")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TextError(i, f"is not valid Unicode: {exc.reason} at character {exc.start}") from exc
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
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the Rust tokenizer raises untyped exceptions
            raise BundleError(
                f"tokenizer.json is not a tokenizer the tokenizers library can read ({exc}); re-export the bundle"
            ) from exc
        probe_normalizer(self._tokenizer)  # the growth its stages promised (check_tokenizer_json)
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
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # untyped errors, and pyo3's PanicException (a BaseException)
            pass
        for i, text in enumerate(texts):  # which text: the error names it
            try:
                self._tokenizer.encode(text, add_special_tokens=False)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                raise TextError(i, f"could not be tokenized ({type(exc).__name__}: {str(exc)[:200]})") from None
        raise InputError("the tokenizer could not encode the input")

    def _starts(self, n: int, *, sliding: bool, stride: int) -> list[int]:
        """Where each window of a text of ``n`` tokens starts."""
        content = self.max_length - 2
        if sliding and not 0 <= stride < content:
            raise InputError(f"stride must be between 0 and {content - 1}, not {stride}")
        if not sliding or n <= content:
            return [0]
        return list(range(0, n - content, content - stride)) + [n - content]

    def read_tokens(self, n: int, *, sliding: bool, stride: int) -> int:
        """Tokens the model reads for a text of ``n`` tokens, every window counted with its
        ``<s>``/``</s>``; a truncated text counts whole (it was tokenized whole)."""
        if not sliding or n <= self.max_length - 2:
            return n + 2
        return len(self._starts(n, sliding=True, stride=stride)) * self.max_length

    def windows(self, encodings: list[Encoding], *, sliding: bool, stride: int) -> list[Window]:
        """Cut each encoding into model-sized windows.

        Args:
            sliding: cover the whole text with overlapping windows; otherwise keep the first
                window only (truncation).
            stride: tokens shared by consecutive windows when ``sliding``.
        """
        content = self.max_length - 2
        out: list[Window] = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            n = len(ids)
            if n == 0:
                raise TextError(i, "has no tokens after normalization")
            starts = self._starts(n, sliding=sliding, stride=stride)
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
