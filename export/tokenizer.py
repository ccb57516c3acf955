"""Build the runtime's ``tokenizer.json`` and prove it matches transformers' tokenizer.

osiria/flare-it ships a *BertTokenizer* (WordPiece ``vocab.txt``) with XLM-R special tokens
``<s> </s> <pad> <unk> <mask>``, ``do_lower_case: true`` and ``strip_accents: false``. The
fast tokenizer is composed stage by stage to reproduce the slow one exactly:

* normalizer: BERT cleaning (control characters dropped, whitespace unified, CJK spaced),
  lowercasing, accents kept or stripped as configured, then NFC (the slow tokenizer
  composes Unicode before splitting words); the control and whitespace sets are spelled out
  from Python's ``unicodedata`` (see ``_python_character_classes``);
* pre-tokenizer: BERT's whitespace and punctuation split (``l'uomo`` -> ``l ' uomo``),
  punctuation again as Python's ``unicodedata`` defines it;
* WordPiece with ``##`` continuations and the 100-character word limit;
* special tokens matched on normalized text, as the slow tokenizer lowercases before it
  looks for them (so ``<MASK>`` is a mask too);
* ``<s> A </s>`` and ``<s> A </s> B </s>``, the BERT way.

Tests compare the ids with the slow tokenizer on every Unicode code point, thousands of
Italian sentences and random text. One known difference: special tokens are found after
normalization, so a control character typed *inside* one (``<s\x01>``) makes it a special
token here, while the slow tokenizer sees ``< s >``.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require
from .checkpoint import read_json

__all__ = ["build_tokenizer", "load_reference_tokenizer", "compare_tokenizers", "special_tokens"]

_BERT_CLASSES = ("BertTokenizer", "BertTokenizerFast")


def _settings(directory: Path) -> dict[str, Any]:
    cfg = read_json(directory / "tokenizer_config.json")
    special_map = read_json(directory / "special_tokens_map.json")
    for key, value in special_map.items():
        cfg.setdefault(key, value)
    for key in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            cfg[key] = value.get("content")
    return cfg


def special_tokens(directory: Path) -> dict[str, str]:
    """The special token strings, with BERT's defaults where the config is silent."""
    cfg = _settings(directory)
    defaults = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}
    return {k: cfg.get(f"{k}_token") or v for k, v in defaults.items()}


def _class(pred: Callable[[int], bool]) -> str:
    """A regex character class of the code points where ``pred`` holds, as ranges."""
    parts = []
    start = None
    for cp in range(0x110001):
        ok = cp < 0x110000 and not 0xD800 <= cp <= 0xDFFF and pred(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            end = cp - 1
            parts.append(f"\\x{{{start:X}}}" if start == end else f"\\x{{{start:X}}}-\\x{{{end:X}}}")
            start = None
    return "[" + "".join(parts) + "]"


# transformers' BasicTokenizer._is_chinese_char ranges
_CJK = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
]


@functools.lru_cache(maxsize=2)
def _python_character_classes(chinese: bool = True) -> tuple[str, str, str]:
    """BERT's control, whitespace and punctuation sets, as transformers' Python code sees them.

    The Rust BertNormalizer/BertPreTokenizer carry Unicode tables of their own, which disagree
    with Python's ``unicodedata`` on unassigned code points (Python drops them as controls)
    and on about a hundred newer punctuation marks. Spelling the sets out from ``unicodedata``
    makes tokenizer.json follow the slow tokenizer exactly (CJK ranges included).
    """
    cat = unicodedata.category

    def control(cp: int) -> bool:
        return cp in (0, 0xFFFD) or (cat(chr(cp)).startswith("C") and chr(cp) not in "\t\n\r")

    def whitespace(cp: int) -> bool:
        return chr(cp) in "\t\n\r" or cat(chr(cp)) == "Zs"

    def isolated(cp: int) -> bool:  # punctuation, and CJK ideographs (split off like it)
        return (
            33 <= cp <= 47
            or 58 <= cp <= 64
            or 91 <= cp <= 96
            or 123 <= cp <= 126
            or cat(chr(cp)).startswith("P")
            or (chinese and any(lo <= cp <= hi for lo, hi in _CJK))
        )

    return _class(control), _class(whitespace), _class(isolated)


def build_tokenizer(directory: Path, *, pair_type_id: int = 1) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to the checkpoint's BertTokenizer.

    Args:
        pair_type_id: segment id of a second text (0 when ``type_vocab_size`` is 1).
    """
    tk = require("tokenizers")
    cfg = _settings(directory)
    vocab_file = directory / "vocab.txt"
    cls_name = cfg.get("tokenizer_class") or "BertTokenizer"
    if cls_name not in _BERT_CLASSES and (directory / "tokenizer.json").exists():
        return _sentencepiece_tokenizer(directory, cls_name)
    if cls_name not in _BERT_CLASSES or not vocab_file.exists():
        raise ExportError(
            f"the checkpoint's tokenizer is {cls_name} "
            f"{'with' if vocab_file.exists() else 'without'} vocab.txt; flare-onnx supports "
            f"WordPiece BertTokenizer checkpoints such as osiria/flare-it, and SentencePiece "
            f"(Unigram) checkpoints with a tokenizer.json such as XLM-R's"
        )
    tokens = special_tokens(directory)
    vocab = _read_vocab(vocab_file, tokens)
    lowercase = bool(cfg.get("do_lower_case", True))
    strip_accents = cfg.get("strip_accents")  # None: strip when lowercasing, as BERT does
    tok = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token=tokens["unk"], max_input_chars_per_word=100))
    chinese = bool(cfg.get("tokenize_chinese_chars", True))
    control, whitespace, isolated = _python_character_classes(chinese)
    tok.normalizer = tk.normalizers.Sequence(
        [
            tk.normalizers.Replace(tk.Regex(control), ""),
            tk.normalizers.Replace(tk.Regex(whitespace), " "),
            tk.normalizers.BertNormalizer(
                clean_text=False,
                handle_chinese_chars=False,  # CJK ideographs are split off by the pre-tokenizer
                strip_accents=strip_accents,
                lowercase=lowercase,
            ),
            tk.normalizers.NFC(),
        ]
    )
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [tk.pre_tokenizers.WhitespaceSplit(), tk.pre_tokenizers.Split(tk.Regex(isolated), "isolated")]
    )
    tok.decoder = tk.decoders.WordPiece(prefix="##")
    # Special tokens as added tokens, in id order, matched after normalization.
    specials = sorted(set(tokens.values()), key=lambda t: vocab[t])
    tok.add_special_tokens([tk.AddedToken(t, normalized=lowercase, special=True) for t in specials])
    cls, sep = tokens["cls"], tokens["sep"]
    tok.post_processor = tk.processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:{pair_type_id} {sep}:{pair_type_id}",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return tok


def _read_vocab(vocab_file: Path, tokens: dict[str, str]) -> dict[str, int]:
    """vocab.txt read exactly as transformers' load_vocab does (universal newlines, last
    duplicate wins), with every special token in it."""
    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as reader:
        for index, line in enumerate(reader.readlines()):
            vocab[line.rstrip("\n")] = index
    for name, token in tokens.items():
        if token not in vocab:
            raise ExportError(f"the {name} token {token!r} is not in vocab.txt")
    return vocab


def _sentencepiece_tokenizer(directory: Path, cls_name: str) -> Any:
    """The checkpoint's own ``tokenizer.json`` (a SentencePiece Unigram model, as XLM-R's),
    without padding or truncation: the runtime windows and pads by itself."""
    tk = require("tokenizers")
    try:
        tok = tk.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # the Rust tokenizer raises untyped exceptions
        raise ExportError(f"{directory / 'tokenizer.json'} cannot be read: {exc}") from exc
    kind = read_json(directory / "tokenizer.json").get("model", {}).get("type")
    if kind != "Unigram":
        raise ExportError(
            f"the checkpoint's tokenizer is {cls_name} with a {kind} tokenizer.json; flare-onnx supports "
            f"WordPiece BertTokenizer checkpoints and SentencePiece (Unigram) ones"
        )
    tok.no_truncation()
    tok.no_padding()
    return tok


def load_reference_tokenizer(directory: Path) -> Any:
    """transformers' tokenizer for the checkpoint, the ground truth: the slow BertTokenizer for
    WordPiece checkpoints, ``AutoTokenizer`` (the SentencePiece model when the checkpoint has
    one) otherwise."""
    transformers = require("transformers")
    cls_name = _settings(directory).get("tokenizer_class") or "BertTokenizer"
    if cls_name not in _BERT_CLASSES and (directory / "tokenizer.json").exists():
        # transformers warns of a "Mistral regex" on every XLM-R tokenizer.json it loads (there
        # is no regex pre-tokenizer in it); the ids are compared right after, so say nothing
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            return transformers.AutoTokenizer.from_pretrained(str(directory))
        finally:
            transformers.logging.set_verbosity(level)
    return transformers.BertTokenizer.from_pretrained(str(directory))


def compare_tokenizers(fast: Any, slow: Any, texts: list[str]) -> dict[str, Any]:
    """Compare ids (single texts and consecutive pairs); return counts and the first mismatch."""
    mismatches = 0
    first: dict[str, Any] | None = None
    pairs = list(zip(texts[::2], texts[1::2]))
    for text in texts:
        a = fast.encode(text).ids
        b = slow(text)["input_ids"]
        if a != b:
            mismatches += 1
            first = first or {"text": text, "fast": a[:40], "slow": b[:40]}
    for x, y in pairs:
        a = fast.encode(x, y).ids
        b = slow(x, y)["input_ids"]
        if a != b:
            mismatches += 1
            first = first or {"text": [x, y], "fast": a[:40], "slow": b[:40]}
    return {"texts": len(texts), "pairs": len(pairs), "mismatches": mismatches, "first_mismatch": first}
