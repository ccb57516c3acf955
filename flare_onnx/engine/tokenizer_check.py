"""A bundle's ``tokenizer.json`` checked before the Rust tokenizer reads it.

A tokenizer is code in all but name: a normalizer can rewrite text without bound (nested
``Replace`` steps that each double it took a server to a 5 GB allocation on a 2,000-character
request), a pre-tokenizer regex can backtrack for minutes, and a vocabulary of millions of
entries takes a minute and a gigabyte to load. The hashes in the manifest only prove that
the file is the one the manifest names, and whoever can rewrite one can rewrite the other.
So a tokenizer must be made of stages from an allow-list, whose output grows by a bounded
factor at most, with regexes that cannot match the empty string or backtrack (a character
class or one character, optionally repeated), and sizes within the bounds below — enough for
every WordPiece, SentencePiece/Unigram and BPE tokenizer the exporter writes (flare-it,
XLM-R, e5, MiniLM).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import BundleError

__all__ = ["check_tokenizer_json", "MAX_VOCAB", "MAX_MERGES", "MAX_ADDED_TOKENS"]

MAX_VOCAB = 1_000_000  # XLM-R: 250,002
MAX_MERGES = 1_000_000
MAX_ADDED_TOKENS = 10_000
MAX_STAGES = 16  # normalizers or pre-tokenizers in one tokenizer, nested sequences included

_NORMALIZERS = {"Sequence", "BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents",
                "Strip", "Replace", "Prepend", "Precompiled", "Nmt"}
_PRE_TOKENIZERS = {"Sequence", "BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace", "Punctuation",
                   "Digits", "ByteLevel", "Split", "UnicodeScripts", "CharDelimiterSplit"}
_MODELS = {"WordPiece", "Unigram", "BPE", "WordLevel"}
_PROCESSORS = {"TemplateProcessing", "RobertaProcessing", "BertProcessing", "ByteLevel", "Sequence"}
_DECODERS = {"WordPiece", "Metaspace", "ByteLevel", "BPEDecoder", "Sequence", "Replace", "Strip", "Fuse",
             "ByteFallback", "CTC"}
# one character class (or one character), optionally repeated at least once: no empty match,
# nothing to backtrack over
_SAFE_REGEX = re.compile(r"(\[(?:\\.|[^\]\\])+\]|\\[^\s]|[^\\\[\](){}*+?|^$.])(\+|\{[1-9]\d*,\d*\})?")


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
        raise BundleError(f"tokenizer.json has more than {MAX_STAGES} normalizer and pre-tokenizer stages")
    for stage in normalizers:
        _check_normalizer(stage)
    for stage in pre_tokenizers:
        if stage["type"] == "Split":
            _check_pattern(stage.get("pattern"), "a Split pre-tokenizer")
    list(_stages(tok.get("post_processor"), "processors", _PROCESSORS, "post-processor"))
    list(_stages(tok.get("decoder"), "decoders", _DECODERS, "decoder"))


def _check_model(model: Mapping[str, Any]) -> None:
    kind = model.get("type")
    if kind not in _MODELS:
        raise BundleError(f"tokenizer.json: model type {kind!r} is not one flare-onnx runs ({', '.join(sorted(_MODELS))})")
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


def _check_pattern(pattern: Any, where: str) -> None:
    if isinstance(pattern, dict) and isinstance(pattern.get("String"), str) and pattern["String"]:
        return
    if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str) and _SAFE_REGEX.fullmatch(pattern["Regex"]):
        return
    raise BundleError(
        f"tokenizer.json: {where} has the pattern {str(pattern)[:80]!r}; flare-onnx takes a non-empty "
        f"string or one character class, optionally repeated (no empty matches, no backtracking)"
    )
