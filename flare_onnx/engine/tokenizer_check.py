r"""A bundle's ``tokenizer.json`` checked before the Rust tokenizer reads it.

A tokenizer is code in all but name: a normalizer can rewrite text without bound (nested
``Replace`` steps that each double it took a server to a 5 GB allocation on a 2,000-character
request), a pre-tokenizer regex can backtrack for minutes, and a vocabulary of millions of
entries takes a minute and a gigabyte to load. The hashes in the manifest only prove that
the file is the one the manifest names, and whoever can rewrite one can rewrite the other.
So a tokenizer must be made of stages from an allow-list, with regexes that cannot match the
empty string or backtrack (one character class, escape or character, optionally repeated: no
zero-width assertions such as ``\B``, no back-references), and sizes within the bounds below.
What a normalizer can do to a text's length is bounded before the Rust tokenizer ever reads the
file (it normalizes the added tokens as it loads them): each stage has a worst-case growth per
character (NFKC 18, for U+FDFA; a SentencePiece character map its longest replacement), their
product over the sequence must stay within :data:`MAX_GROWTH`, and :func:`probe_normalizer`
checks the built tokenizer on a text of the characters that grow most. That is enough for every
WordPiece, SentencePiece/Unigram and BPE tokenizer the exporter writes (flare-it, XLM-R, e5,
MiniLM: growth bounds 8-32; NFKC then lowercase, 36) and refuses the chains that grow text a thousandfold.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import BundleError

__all__ = [
    "check_tokenizer_json",
    "normalizer_growth",
    "probe_normalizer",
    "MAX_VOCAB",
    "MAX_MERGES",
    "MAX_ADDED_TOKENS",
    "MAX_STAGES",
    "MAX_GROWTH",
]

MAX_VOCAB = 1_000_000  # XLM-R: 250,002
MAX_MERGES = 1_000_000
MAX_ADDED_TOKENS = 10_000
# normalizers and pre-tokenizers in one tokenizer, nested sequences included: each is a pass
# over every text (real tokenizers have 1-6; a SentencePiece map written as thousands of
# Replace rules is refused, at export as at load: keep it a Precompiled map)
MAX_STAGES = 32
#: the most a normalizer may multiply a text's length by (worst case over its stages)
MAX_GROWTH = 64

# worst-case characters out per character in, by normalizer (Replace and Prepend: below)
_GROWTH = {"NFKC": 18, "NFKD": 18, "NFC": 4, "NFD": 4, "Lowercase": 2, "StripAccents": 1, "Strip": 1, "Nmt": 1}

_NORMALIZERS = {
    "Sequence",
    "BertNormalizer",
    "NFC",
    "NFD",
    "NFKC",
    "NFKD",
    "Lowercase",
    "StripAccents",
    "Strip",
    "Replace",
    "Prepend",
    "Precompiled",
    "Nmt",
}
_PRE_TOKENIZERS = {
    "Sequence",
    "BertPreTokenizer",
    "Whitespace",
    "WhitespaceSplit",
    "Metaspace",
    "Punctuation",
    "Digits",
    "ByteLevel",
    "Split",
    "UnicodeScripts",
    "CharDelimiterSplit",
}
_MODELS = {"WordPiece", "Unigram", "BPE", "WordLevel"}
_PROCESSORS = {"TemplateProcessing", "RobertaProcessing", "BertProcessing", "ByteLevel", "Sequence"}
_DECODERS = {
    "WordPiece",
    "Metaspace",
    "ByteLevel",
    "BPEDecoder",
    "Sequence",
    "Replace",
    "Strip",
    "Fuse",
    "ByteFallback",
    "CTC",
}
# one character class, one escape that stands for one character (or a class of them) or one
# character, optionally repeated at least once: no empty match, nothing to backtrack over.
# Escapes that match no character (\b \B \A \z \Z \G \K) and back-references are not here.
_ATOM = (
    r"\[(?:\\.|[^\]\\])+\]"  # [...]
    r"|\\[pP]\{\^?[\w ]+\}|\\x\{[0-9A-Fa-f]{1,6}\}|\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}"
    r"|\\[sSdDwWhHtnrfve]|\\[^\w\s]"  # a class escape, a control, escaped punctuation
    r"|[^\\\[\](){}*+?|^$.]"
)  # a plain character
_SAFE_REGEX = re.compile(rf"(?:{_ATOM})(?:\+|\{{[1-9]\d*,\d*\}})?")


def check_tokenizer_json(text: str) -> None:
    """Refuse a ``tokenizer.json`` that is not a tokenizer, or one that could hurt the host.

    Raises:
        BundleError: naming the stage or size that is refused.
    """
    try:
        tok = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"tokenizer.json is not valid JSON ({exc}); re-export the bundle") from exc
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        raise BundleError("tokenizer.json is not a tokenizer (no model); re-export the bundle")
    _check_model(tok["model"])
    added = tok.get("added_tokens") or []
    if not isinstance(added, list) or len(added) > MAX_ADDED_TOKENS:
        raise BundleError(f"tokenizer.json: added_tokens must be a list of at most {MAX_ADDED_TOKENS}")
    normalizers = list(_stages(tok.get("normalizer"), "normalizers", _NORMALIZERS, "normalizer"))
    pre_tokenizers = list(_stages(tok.get("pre_tokenizer"), "pretokenizers", _PRE_TOKENIZERS, "pre-tokenizer"))
    if len(normalizers) + len(pre_tokenizers) > MAX_STAGES:
        raise BundleError(
            f"tokenizer.json has {len(normalizers) + len(pre_tokenizers)} normalizer and pre-tokenizer stages, "
            f"more than {MAX_STAGES} (each is a pass over every text; write a character map as one "
            f"Precompiled normalizer or a few character classes, not one rule per character)"
        )
    for stage in normalizers:
        _check_normalizer(stage)
    growth = normalizer_growth(normalizers)
    if growth > MAX_GROWTH:
        raise BundleError(
            f"tokenizer.json: its normalizers can multiply a text's length by {growth:,}, more than "
            f"{MAX_GROWTH} (a chain of expanding stages); re-export the bundle with its model's own tokenizer"
        )
    for stage in pre_tokenizers:
        if stage["type"] == "Split":
            _check_pattern(stage.get("pattern"), "a Split pre-tokenizer")
    list(_stages(tok.get("post_processor"), "processors", _PROCESSORS, "post-processor"))
    list(_stages(tok.get("decoder"), "decoders", _DECODERS, "decoder"))


def _check_model(model: Mapping[str, Any]) -> None:
    kind = model.get("type")
    if kind not in _MODELS:
        raise BundleError(
            f"tokenizer.json: model type {kind!r} is not one flare-onnx runs ({', '.join(sorted(_MODELS))})"
        )
    vocab = model.get("vocab")
    if not isinstance(vocab, (list, dict)) or not vocab or len(vocab) > MAX_VOCAB:
        raise BundleError(f"tokenizer.json: the vocabulary must hold 1 to {MAX_VOCAB:,} entries")
    merges = model.get("merges") or []
    if not isinstance(merges, list) or len(merges) > MAX_MERGES:
        raise BundleError(f"tokenizer.json: a BPE model may hold at most {MAX_MERGES:,} merges")


def _stages(node: Any, children: str, allowed: set[str], what: str, depth: int = 0) -> Iterator[Mapping[str, Any]]:
    """Every stage of a (possibly nested) sequence, each of an allowed type."""
    if node is None:
        return
    if not isinstance(node, dict) or node.get("type") not in allowed:
        kind = node.get("type") if isinstance(node, dict) else type(node).__name__
        raise BundleError(f"tokenizer.json: {what} {kind!r} is not allowed (allowed: {', '.join(sorted(allowed))})")
    if node["type"] == "Sequence":
        if depth >= 3 or not isinstance(node.get(children), list):
            raise BundleError(f"tokenizer.json: a {what} sequence is malformed or nested too deeply")
        for child in node[children]:
            yield from _stages(child, children, allowed, what, depth + 1)
    else:
        yield node


def _check_normalizer(stage: Mapping[str, Any]) -> None:
    """A normalizer may grow text by a bounded factor only: Replace and Prepend write at most
    one character for a match that cannot be empty."""
    if stage["type"] == "Replace":
        content = stage.get("content")
        if not isinstance(content, str) or len(content) > 1:
            raise BundleError("tokenizer.json: a Replace normalizer may write at most one character per match")
        _check_pattern(stage.get("pattern"), "a Replace normalizer")
    if stage["type"] == "Prepend":
        prepend = stage.get("prepend")
        if not isinstance(prepend, str) or len(prepend) > 1:
            raise BundleError("tokenizer.json: a Prepend normalizer may add at most one character")


def normalizer_growth(stages: list[Mapping[str, Any]]) -> int:
    """The most the normalizer stages (checked, in order) can multiply a text's length by."""
    growth = 1
    for stage in stages:
        kind = stage["type"]
        if kind == "BertNormalizer":
            # CJK characters spaced (x3); accents stripped through NFD (x4), then lowercased (x2)
            strip = stage.get("strip_accents")
            strip = stage.get("lowercase", True) if strip is None else strip
            chinese = 3 if stage.get("handle_chinese_chars", True) else 1
            factor = max(chinese, (4 if strip else 1) * (2 if stage.get("lowercase", True) else 1))
        elif kind == "Precompiled":
            factor = _charsmap_growth(stage.get("precompiled_charsmap"))
        elif kind == "Prepend":
            factor = 2  # one character before the text: a one-character text doubles
        elif kind == "Replace":
            factor = 1  # at most one character for a match of one or more (_check_normalizer)
        else:
            factor = _GROWTH[kind]
        growth = min(growth * factor, 1 << 40)
    return growth


def _charsmap_growth(charsmap: Any) -> int:
    """A SentencePiece character map's longest replacement, in characters: its worst growth
    (every input it rewrites is one character at least)."""
    if charsmap is None:
        return 1
    try:
        blob = base64.b64decode(charsmap, validate=True) if isinstance(charsmap, str) else bytes(charsmap)
        (trie_size,) = struct.unpack_from("<I", blob, 0)
        strings = blob[4 + trie_size :].split(b"\0")
        return max([1] + [len(s.decode("utf-8")) for s in strings])
    except (ValueError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise BundleError(f"tokenizer.json: a Precompiled normalizer's character map is malformed ({exc})") from exc


#: characters whose normalization grows most (NFKC: U+FDFA -> 18, U+3300 -> 4; CJK spaced;
#: Hangul and Greek decomposed; İ lowercased to two), with ordinary Italian text around them
_PROBE = (
    "Roma è la capitale d'Italia; perché? "
    "\ufdfa\ufdfb\u3300\u337f\u4e00\u4e8c\uac00\u1f82\u0130\u00bd\uff21\u2026\u0390 "
)


def probe_normalizer(tokenizer: Any) -> None:
    """Normalize a short text of the fastest-growing characters with the built tokenizer and
    refuse it if the text grew by more than :data:`MAX_GROWTH` (what the stages promised).

    Raises:
        BundleError: the normalizer grew the probe beyond the bound, or failed on it.
    """
    normalizer = tokenizer.normalizer
    if normalizer is None:
        return
    try:
        out = normalizer.normalize_str(_PROBE)
    except Exception as exc:  # the Rust tokenizer raises untyped exceptions
        raise BundleError(
            f"tokenizer.json: its normalizer fails on ordinary text ({exc}); re-export the bundle"
        ) from exc
    if len(out) > MAX_GROWTH * len(_PROBE):
        raise BundleError(
            f"tokenizer.json: its normalizer grew a {len(_PROBE)}-character text to {len(out):,} characters, "
            f"more than {MAX_GROWTH}x; re-export the bundle with its model's own tokenizer"
        )


def _check_pattern(pattern: Any, where: str) -> None:
    if isinstance(pattern, dict) and isinstance(pattern.get("String"), str) and pattern["String"]:
        return
    if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str) and _SAFE_REGEX.fullmatch(pattern["Regex"]):
        return
    raise BundleError(
        f"tokenizer.json: {where} has the pattern {str(pattern)[:80]!r}; flare-onnx takes a non-empty "
        f"string or one character class, optionally repeated (no empty matches, no backtracking)"
    )
