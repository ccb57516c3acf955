"""Flare-IT's own recipe for any multilingual encoder: prune the vocabulary to the language of
a corpus.

osiria/flare-it was made from mMiniLMv2 by counting, over Italian Wikipedia, in how many
documents each token of the 250k-piece XLM-R vocabulary appears, keeping those above a
threshold, and cutting the embedding table to them. :func:`prune_checkpoint` does the same to
a checkpoint directory, before it is exported:

* **count**: the checkpoint's own tokenizer runs over the corpus (a file, a folder of files,
  or ``-`` for standard input; one document per line, streamed in chunks, so memory is bounded
  by the vocabulary, not the corpus) and, with ``words``, over the most frequent Italian words
  of a frequency list in the forms text writes them (:func:`italian_words`: the long tail a
  small corpus never sees), and each token's *document frequency* is counted;
* **keep**: the special tokens; every token seen in at least ``min_doc_freq`` documents (a
  count, or a share of the documents when below 1); and every single-character piece of the
  scripts the tokenizer must still cover — Latin, digits, punctuation and symbols of the
  common blocks, and every character seen in the corpus — so that any text still tokenizes:
  what is not kept falls back to shorter pieces or, for characters of other scripts, to the
  unknown token, never to an empty encoding; and every piece made only of digits, punctuation
  and symbols (numbers, ``").``, ``▁(18``), which text in any language uses and a corpus keeps
  only a few of;
* **rewrite**: the tokenizer with the new ids (a Unigram model keeps its pieces' scores, so a
  text whose best segmentation uses only kept pieces tokenizes exactly as before; WordPiece
  keeps its subwords likewise), and the weights: the word-embedding rows, a tied MLM
  decoder's rows and bias, ``config.vocab_size`` and the special ids.

The pruned checkpoint then goes through the same verified export as any other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flare_onnx.errors import ExportError

from ._deps import require

__all__ = ["prune_checkpoint", "italian_words", "DEFAULT_MIN_DOC_FREQ", "WORD_FORMS"]

#: a token must appear in this many documents (lines) of the corpus to be kept. 1 keeps every
#: token the corpus uses: on corpora of thousands of sentences each higher threshold lost
#: held-out sentences' exact tokenization (docs/export.md); on a Wikipedia-sized corpus a share
#: such as 0.001 (flare-it's 0.1%) keeps the vocabulary small.
DEFAULT_MIN_DOC_FREQ: float = 1
CHUNK_LINES = 2048
#: how many of the most frequent words :func:`italian_words` also writes in capitals and
#: elided before a capital; measured on multilingual-e5-small (docs/export.md): 20,000 and
#: 40,000 keep 99.3% and 99.4% of held-out sentences' tokens, the whole list no more for 636
#: more tokens.
WORD_FORMS = 40_000


#: a corpus line is read in pieces of at most this many bytes, each a document: memory stays
#: bounded whatever the corpus (the red team's was one line of 50 MB: 8.2 GB before)
MAX_LINE_BYTES = 1 << 16


def _documents(corpus: str | Path) -> Iterator[str]:
    """One document per non-empty line (lines starting with ``#`` are comments) of a file, of
    every file in a folder, or of stdin; a line longer than :data:`MAX_LINE_BYTES` in pieces.

    Raises:
        ExportError: no such file or folder, or a file that is not UTF-8 text (compressed, binary).
    """
    if str(corpus) == "-":
        yield from _lines(sys.stdin.buffer, "standard input")
        return
    path = Path(corpus)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise ExportError(f"the pruning corpus {str(corpus)!r} is not a file, a folder of files, or -")
    for f in files:
        with open(f, "rb") as stream:
            yield from _lines(stream, str(f))


def _lines(stream: Any, name: str) -> Iterator[str]:
    """The documents of one byte stream, refused when it is not UTF-8 text."""
    head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
    if (
        head.startswith(b"\x1f\x8b")
        or head.startswith(b"PK\x03\x04")
        or head.startswith(b"BZh")
        or head.startswith(b"\xfd7zXZ")
    ):
        raise ExportError(
            f"the pruning corpus {name} is compressed; decompress it first (zcat FILE | ... --prune-vocab -)"
        )
    checked, comment, line_start = 0, False, True
    while piece := stream.readline(MAX_LINE_BYTES):
        text = piece.decode("utf-8", errors="replace")
        if checked < MAX_LINE_BYTES and ("\0" in text or text.count("\ufffd") > 8):
            raise ExportError(f"the pruning corpus {name} is not UTF-8 text (binary data in its first lines)")
        checked += len(piece)
        comment = text.startswith("#") if line_start else comment  # a long line's pieces are its own
        line_start = piece.endswith(b"\n")
        if not comment and text.strip():
            yield text.strip()


def italian_words(n: int, forms: int = WORD_FORMS) -> list[str]:
    """The ``n`` most frequent Italian words of wordfreq's list (Wikipedia, subtitles, news, web
    text and books; 322,796 words), each lower-case and Capitalised, and the ``forms`` most
    frequent also in CAPITALS and elided before a capital (``l'Europa``: after an apostrophe
    SentencePiece pieces carry no word-start mark, so ``Europa`` there is another piece than
    ``▁Europa``). One document each. The list's data (CC-BY-SA) is read at export time only.

    Raises:
        ImportError: wordfreq is not installed (``pip install ".[prune]"``).
    """
    try:
        from wordfreq import iter_wordlist
    except ImportError as exc:
        raise ImportError(f'pruning with a word list needs wordfreq: pip install ".[prune]" ({exc})') from exc
    words = list(itertools.islice(iter_wordlist("it", "large"), n))
    capital = [w[:1].upper() + w[1:] for w in words]
    return words + capital + [w.upper() for w in words[:forms]] + ["l'" + w for w in capital[:forms]]


def count_documents(tokenizer: Any, documents: Iterable[str]) -> tuple[Counter[int], int, str, set[str]]:
    """Document frequency of every token id; the number of documents, their sha256 and the
    characters they use."""
    df: Counter[int] = Counter()
    digest, docs, chars = hashlib.sha256(), 0, set()
    chunk: list[str] = []

    def flush() -> None:
        for enc in tokenizer.encode_batch(chunk, add_special_tokens=False):
            df.update(set(enc.ids))
        chunk.clear()

    for doc in documents:
        digest.update(doc.encode("utf-8") + b"\n")
        chars.update(doc)
        chunk.append(doc)
        docs += 1
        if len(chunk) >= CHUNK_LINES:
            flush()
    if chunk:
        flush()
    return df, docs, digest.hexdigest(), chars


def _covered(char: str, seen: set[str]) -> bool:
    """A single character the pruned tokenizer must still have: seen in the corpus, or Latin,
    a digit, punctuation or a common symbol."""
    if char in seen or ord(char) < 0x0250:  # ASCII, Latin-1, Latin Extended-A/B
        return True
    category = unicodedata.category(char)
    return category[0] in "PNZ" or category in ("Sm", "Sc") or unicodedata.name(char, "").startswith("LATIN")


def _core(piece: str, kind: str) -> str:
    """A piece without its word-start (``▁``, Unigram) or continuation (``##``, WordPiece) mark."""
    return piece.removeprefix("▁") if kind == "Unigram" else piece.removeprefix("##")


def _single_char(piece: str, kind: str) -> str | None:
    """The character of a one-character piece (``▁x`` for Unigram, ``##x`` for WordPiece), if it is one."""
    core = _core(piece, kind)
    return core if len(core) == 1 else None


def _neutral_char(char: str) -> bool:
    """An ASCII digit, or punctuation or a symbol of the Latin blocks, General Punctuation or currency."""
    if "0" <= char <= "9":
        return True
    code, category = ord(char), unicodedata.category(char)
    return category[0] in "PS" and (code < 0x0250 or 0x2000 <= code < 0x2070 or category == "Sc")


def _language_neutral(piece: str, kind: str) -> bool:
    """A piece made only of digits, punctuation and symbols (``1848``, ``").``, ``▁(18``): every
    language's text uses them, so a corpus of any size misses many of them and the word lists
    have none; they are kept whatever the corpus (3,136 of XLM-R's 250,002 pieces)."""
    core = _core(piece, kind)
    return bool(core) and all(_neutral_char(c) for c in core)


def _kept_ids(tok_json: dict[str, Any], df: Counter[int], docs: int, min_doc_freq: float, seen: set[str]) -> list[int]:
    model = tok_json["model"]
    kind = model["type"]
    pieces = [p for p, _ in model["vocab"]] if kind == "Unigram" else sorted(model["vocab"], key=model["vocab"].get)
    threshold = min_doc_freq * docs if min_doc_freq < 1 else min_doc_freq
    special = {t["id"] for t in tok_json.get("added_tokens", [])}
    if kind == "Unigram":
        special.add(model["unk_id"])
    keep = []
    for i, piece in enumerate(pieces):
        char = _single_char(piece, kind)
        if (
            i in special
            or df[i] >= threshold
            or piece in ("▁", "##")
            or (char is not None and _covered(char, seen))
            or _language_neutral(piece, kind)
        ):
            keep.append(i)
    return keep


def _rewrite_tokenizer(tok_json: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """The tokenizer with only ``keep`` (old ids, ascending), renumbered in the same order."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(tok_json))
    model = out["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [tok_json["model"]["vocab"][i] for i in keep]
        model["unk_id"] = new_id[tok_json["model"]["unk_id"]]
    elif model["type"] == "WordPiece":
        by_id = {i: p for p, i in tok_json["model"]["vocab"].items()}
        model["vocab"] = {by_id[i]: new_id[i] for i in keep}
    else:
        raise ExportError(f"pruning supports Unigram (SentencePiece) and WordPiece tokenizers, not {model['type']}")
    for token in out.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _remap_post_processor(out.get("post_processor"), new_id)
    return out


def _remap_post_processor(node: Any, new_id: dict[int, int]) -> None:
    if not isinstance(node, dict):
        return
    if node.get("type") == "TemplateProcessing":
        for special in node.get("special_tokens", {}).values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # RobertaProcessing / BertProcessing: [token, id]
        if isinstance(node.get(key), list):
            node[key][1] = new_id[node[key][1]]
    for child in node.get("processors", []):
        _remap_post_processor(child, new_id)


def _prune_weights(source: Path, out: Path, keep: list[int]) -> None:
    """Cut every tensor indexed by the vocabulary (embedding rows, MLM decoder rows and bias)."""
    torch = require("torch")
    from .checkpoint import _load_state_dict

    state = _load_state_dict(source)
    vocab = None
    for name, tensor in state.items():
        if name.endswith("word_embeddings.weight"):
            vocab = tensor.shape[0]
    if vocab is None:
        raise ExportError(f"{source} has no word_embeddings weight to prune")
    index = torch.tensor(keep, dtype=torch.long)
    pruned = {}
    for name, tensor in state.items():
        cut = (
            tensor.dim() >= 1
            and tensor.shape[0] == vocab
            and (
                name.endswith(("word_embeddings.weight", "decoder.weight", "decoder.bias"))
                or name in ("lm_head.bias", "cls.predictions.bias")
            )
        )
        pruned[name] = tensor.index_select(0, index).contiguous() if cut else tensor.contiguous()
    require("safetensors.torch").save_file(pruned, str(out / "model.safetensors"))


def _check_pruning(corpus: str | Path | None, min_doc_freq: float, words: int) -> None:
    if not 0 < min_doc_freq < float("inf"):
        raise ExportError(f"min_doc_freq must be a count >= 1 or a share in (0, 1), not {min_doc_freq!r}")
    if isinstance(words, bool) or not isinstance(words, int) or words < 0:
        raise ExportError(f"the number of words to keep (prune_words, --prune-words) must be >= 0, not {words!r}")
    if corpus is None and not words:
        raise ExportError("pruning needs a corpus, a number of words, or both")


def _tokenizer_json(source: Path) -> dict[str, Any]:
    """The checkpoint's tokenizer.json, or the one the exporter builds for a WordPiece checkpoint."""
    tok_file = source / "tokenizer.json"
    if tok_file.exists():
        parsed: dict[str, Any] = json.loads(tok_file.read_text(encoding="utf-8"))
        return parsed
    from .tokenizer import build_tokenizer

    built: dict[str, Any] = json.loads(build_tokenizer(source).to_str())
    return built


#: the checkpoint's files that pruning rewrites (the others are copied as they are)
_REWRITTEN = (
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "config.json",
)


def _write_pruned(source: Path, out: Path, tok_json: dict[str, Any], keep: list[int]) -> None:
    """The checkpoint at ``source`` written to ``out`` with only the token ids ``keep``: its
    tokenizer (and WordPiece's vocab.txt), embedding rows and config renumbered, the rest copied."""
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in _REWRITTEN:
            shutil.copy(f, out / f.name)
    pruned_tok = _rewrite_tokenizer(tok_json, keep)
    (out / "tokenizer.json").write_text(json.dumps(pruned_tok, ensure_ascii=False), encoding="utf-8")
    if tok_json["model"]["type"] == "WordPiece":
        vocab = pruned_tok["model"]["vocab"]
        (out / "vocab.txt").write_text("".join(p + "\n" for p in sorted(vocab, key=vocab.get)), encoding="utf-8")
    _prune_weights(source, out, keep)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    new_id = {old: new for new, old in enumerate(keep)}
    config["vocab_size"] = len(keep)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(config.get(key), int) and config[key] in new_id:
            config[key] = new_id[config[key]]
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def prune_checkpoint(
    source: Path,
    out: Path,
    corpus: str | Path | None,
    *,
    min_doc_freq: float = DEFAULT_MIN_DOC_FREQ,
    words: int = 0,
    prompts: Iterable[str] = (),
    log: Any = print,
) -> dict[str, Any]:
    """Write a copy of the checkpoint at ``source`` to ``out`` with its vocabulary pruned to
    the tokens ``corpus``, the ``words`` most frequent Italian words (:func:`italian_words`) and
    ``prompts`` (E5's ``query: ``, put before every text) use; return the manifest's record.

    Raises:
        ExportError: the tokenizer cannot be pruned (only Unigram and WordPiece can), the
            corpus is empty or missing and no words were asked for, or the weights have no
            embedding table.
        ImportError: ``words`` without wordfreq installed.
    """
    tk = require("tokenizers")
    _check_pruning(corpus, min_doc_freq, words)
    listed = italian_words(words) if words else []
    tok_json = _tokenizer_json(source)
    tokenizer = tk.Tokenizer.from_str(json.dumps(tok_json))
    log(f"counting tokens over {corpus or 'no corpus'}" + (f" and {len(listed):,} word forms" if listed else ""))
    texts = [p for p in prompts if p.strip()]
    documents = itertools.chain(_documents(corpus) if corpus is not None else (), listed, texts)
    df, docs, digest, seen = count_documents(tokenizer, documents)
    if corpus is not None and docs == len(listed) + len(texts):
        raise ExportError(f"the pruning corpus {str(corpus)!r} holds no text")
    keep = _kept_ids(tok_json, df, docs, min_doc_freq, seen)
    original = tokenizer.get_vocab_size()
    log(f"keeping {len(keep):,} of {original:,} tokens ({docs:,} documents, min_doc_freq {min_doc_freq:g})")
    _write_pruned(source, out, tok_json, keep)
    return {
        "original_vocab_size": original,
        "kept": len(keep),
        "documents": docs,
        "corpus_sha256": digest,
        "words": {"list": "wordfreq it large", "most_frequent": words, "forms_of": WORD_FORMS, "documents": len(listed)}
        if listed
        else None,
        "min_doc_freq": min_doc_freq,
        "kept_share": len(keep) / original,
        "dropped_ids_fall_back_to": "shorter pieces, or the unknown token for characters not covered",
    }
