"""Build the runtime's ``tokenizer.json`` and prove it matches transformers' tokenizer.

osiria/flare-it ships a *BertTokenizer* (WordPiece ``vocab.txt``) with XLM-R special tokens
``<s> </s> <pad> <unk> <mask>``, ``do_lower_case: true`` and ``strip_accents: false``. The
fast tokenizer is composed stage by stage to reproduce the slow one exactly:

* normalizer: BERT cleaning (control characters dropped, whitespace unified, CJK spaced),
  lowercasing, accents kept or stripped as configured, then NFC (the slow tokenizer
  composes Unicode before splitting words);
* pre-tokenizer: BERT's whitespace and punctuation split (``l'uomo`` -> ``l ' uomo``);
* WordPiece with ``##`` continuations and the 100-character word limit;
* special tokens matched on normalized text, as the slow tokenizer lowercases before it
  looks for them (so ``<MASK>`` is a mask too);
* ``<s> A </s>`` and ``<s> A </s> B </s>``, the BERT way.
"""

from __future__ import annotations

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


def build_tokenizer(directory: Path, *, pair_type_id: int = 1) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to the checkpoint's BertTokenizer.

    Args:
        pair_type_id: segment id of a second text (0 when ``type_vocab_size`` is 1).
    """
    tk = require("tokenizers")
    cfg = _settings(directory)
    vocab_file = directory / "vocab.txt"
    cls_name = cfg.get("tokenizer_class") or "BertTokenizer"
    if cls_name not in _BERT_CLASSES or not vocab_file.exists():
        raise ExportError(
            f"the checkpoint's tokenizer is {cls_name} "
            f"{'with' if vocab_file.exists() else 'without'} vocab.txt; flare-onnx supports "
            f"WordPiece BertTokenizer checkpoints such as osiria/flare-it"
        )
    tokens = special_tokens(directory)
    # Read exactly as transformers' load_vocab does (universal newlines, last duplicate wins).
    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as reader:
        for index, line in enumerate(reader.readlines()):
            vocab[line.rstrip("\n")] = index
    for name, token in tokens.items():
        if token not in vocab:
            raise ExportError(f"the {name} token {token!r} is not in vocab.txt")
    lowercase = bool(cfg.get("do_lower_case", True))
    strip_accents = cfg.get("strip_accents")  # None: strip when lowercasing, as BERT does
    tok = tk.Tokenizer(
        tk.models.WordPiece(vocab, unk_token=tokens["unk"], max_input_chars_per_word=100)
    )
    tok.normalizer = tk.normalizers.Sequence(
        [
            tk.normalizers.BertNormalizer(
                clean_text=True,
                handle_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
                strip_accents=strip_accents,
                lowercase=lowercase,
            ),
            tk.normalizers.NFC(),
        ]
    )
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
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


def load_reference_tokenizer(directory: Path) -> Any:
    """transformers' slow BertTokenizer for the checkpoint: the ground truth."""
    transformers = require("transformers")
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
