"""Vocabulary pruning (Flare-IT's recipe): the pruned bundle is verified like any other, keeps
what the corpus uses, and still takes any text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import flare_onnx
from flare_onnx import ExportError
from flare_onnx_export import export_bundle

SAMPLE = Path(__file__).resolve().parents[1] / "export" / "data" / "italiano.txt"


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def pruned(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "b"
    return export_bundle(str(tiny_checkpoint), out, task="feature-extraction", prune_vocab=SAMPLE, log=_quiet)


def test_the_pruned_bundle_is_verified_and_records_what_was_pruned(pruned, tiny_checkpoint):
    manifest = json.loads((pruned / "manifest.json").read_text())
    record = manifest["vocabulary"]
    original = sum(1 for _ in open(tiny_checkpoint / "vocab.txt", encoding="utf-8"))
    assert record["original_vocab_size"] == original and 0 < record["kept"] < original
    assert record["documents"] == sum(1 for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#"))
    assert len(record["corpus_sha256"]) == 64 and record["corpus"] == "italiano.txt"
    assert manifest["tokenizer_check"]["mismatches"] == 0  # against transformers on the pruned vocabulary
    assert manifest["verification"]["fp32"]["max_abs_diff"] <= 1e-4  # against PyTorch on the pruned model
    assert not any(p.name.startswith(".") for p in pruned.iterdir())  # the pruned checkpoint is not shipped
    model = flare_onnx.load(pruned)
    assert model.tokenizer.tokenizer.get_vocab_size() == record["kept"]


def test_text_the_corpus_uses_tokenizes_as_before(pruned, tiny_feature_bundle):
    full, cut = flare_onnx.load(tiny_feature_bundle, precision="fp32"), flare_onnx.load(pruned, precision="fp32")
    texts = [t for t in SAMPLE.read_text(encoding="utf-8").splitlines() if t.strip() and not t.startswith("#")][:50]
    before = [[full.tokenizer.id_to_token(i) for i in e.ids] for e in full.tokenizer.encode(texts)]
    after = [[cut.tokenizer.id_to_token(i) for i in e.ids] for e in cut.tokenizer.encode(texts)]
    assert before == after
    np.testing.assert_allclose(cut.embed(texts), full.embed(texts), atol=1e-5)


@pytest.fixture(scope="module")
def both(pruned, tiny_feature_bundle):
    return flare_onnx.load(tiny_feature_bundle), flare_onnx.load(pruned)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=80))
def test_any_text_still_tokenizes_and_runs(both, text):
    """Other scripts, emoji, code: whatever the full vocabulary encodes, the pruned one does too."""
    full, cut = both
    assume(full.tokenizer.encode([text])[0].ids)  # (text the full model reads as nothing is refused by both)
    assert cut.tokenizer.encode([text])[0].ids
    vector = cut.embed(text)
    assert vector.shape == (32,) and np.isfinite(vector).all()


def test_a_missing_corpus_is_an_export_error(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="is not a file, a folder of files, or -"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", prune_vocab=tmp_path / "nothing.txt", log=_quiet)
    assert not (tmp_path / "b").exists()


def test_numbers_and_punctuation_are_kept_whatever_the_corpus(tiny_checkpoint, tiny_feature_bundle, tmp_path):
    """A corpus without a single digit or quote still keeps the pieces of numbers and
    punctuation: they tokenize as before the pruning."""
    lines = [t for t in SAMPLE.read_text(encoding="utf-8").splitlines() if t.strip() and not t.startswith("#")]
    corpus = tmp_path / "parole.txt"
    corpus.write_text("".join("".join(c for c in t if c.isalpha() or c == " ") + "\n" for t in lines[:40]), encoding="utf-8")
    cut = flare_onnx.load(export_bundle(str(tiny_checkpoint), tmp_path / "b", task="feature-extraction",
                                        prune_vocab=corpus, log=_quiet), precision="fp32")
    full = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    vocab = full.tokenizer.tokenizer.get_vocab()
    numbers = [t for t in vocab if t.removeprefix("##").isdigit() and len(t.removeprefix("##")) > 1]
    assert numbers and all(t in cut.tokenizer.tokenizer.get_vocab() for t in numbers)
    texts = [" ".join(w for w in t.split() if any(c.isdigit() for c in w)) for t in lines]  # "1860." "2009."
    texts = [t for t in texts if t]
    assert len(texts) >= 10
    before = [[full.tokenizer.id_to_token(i) for i in e.ids] for e in full.tokenizer.encode(texts)]
    after = [[cut.tokenizer.id_to_token(i) for i in e.ids] for e in cut.tokenizer.encode(texts)]
    assert before == after


def test_word_forms_are_the_frequent_words_as_text_writes_them():
    from flare_onnx_export.prune import italian_words

    forms = italian_words(300, forms=20)
    words = forms[:300]
    assert len(forms) == 300 * 2 + 20 * 2 and len(set(words)) == 300
    assert {"di", "che", "il"} <= set(words) and "Di" in forms[300:600]
    assert forms[600:620] == [w.upper() for w in words[:20]]
    assert forms[620:] == ["l'" + w[:1].upper() + w[1:] for w in words[:20]]


def test_pruning_to_words_alone_keeps_every_word_form_intact(tiny_checkpoint, tiny_feature_bundle, tmp_path):
    """No corpus at all: the frequent words in every form they are written keep their tokens, and
    the manifest says which list made the vocabulary."""
    from flare_onnx_export.prune import italian_words

    out = export_bundle(str(tiny_checkpoint), tmp_path / "b", task="feature-extraction", prune_words=3000, log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["vocabulary"]
    forms = italian_words(3000)
    assert record["corpus"] is None and record["documents"] == len(forms)
    assert record["words"] == {"list": "wordfreq it large", "most_frequent": 3000, "forms_of": 40_000,
                               "documents": len(forms)}
    full, cut = flare_onnx.load(tiny_feature_bundle, precision="fp32"), flare_onnx.load(out, precision="fp32")
    assert record["kept"] < record["original_vocab_size"]
    before = [[full.tokenizer.id_to_token(i) for i in e.ids] for e in full.tokenizer.encode(forms)]
    after = [[cut.tokenizer.id_to_token(i) for i in e.ids] for e in cut.tokenizer.encode(forms)]
    assert before == after


@pytest.mark.parametrize("words, message", [(0, "pruning needs a corpus, a number of words, or both"),
                                            (-5, r"the number of words to keep \(prune_words, --prune-words\) must be >= 0, not -5")])
def test_bad_word_counts_are_export_errors(tiny_checkpoint, tmp_path, words, message):
    from flare_onnx_export.prune import prune_checkpoint

    with pytest.raises(ExportError, match=message):
        prune_checkpoint(tiny_checkpoint, tmp_path / "c", None, words=words, log=_quiet)
    assert not (tmp_path / "c").exists()


def test_the_stored_prompts_keep_their_tokens(tiny_checkpoint, tiny_feature_bundle, tmp_path):
    """A prompt goes before every text the bundle embeds: its pieces are kept even when the
    corpus never uses them (E5's "query: " lost "ry" in a small prune)."""
    full = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    used = {i for e in full.tokenizer.encode(SAMPLE.read_text(encoding="utf-8").splitlines()) for i in e.ids}
    vocab = full.tokenizer.tokenizer.get_vocab()
    word = next(t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])
                if i not in used and t.isalpha() and t.islower() and len(t) >= 3)
    prompt = f"{word}: "
    out = export_bundle(str(tiny_checkpoint), tmp_path / "b", task="feature-extraction", prune_vocab=SAMPLE,
                        prompts={"query": prompt}, log=_quiet)
    cut = flare_onnx.load(out, precision="fp32")
    text = prompt + "il gatto dorme"
    before = [full.tokenizer.id_to_token(i) for i in full.tokenizer.encode([text])[0].ids]
    after = [cut.tokenizer.id_to_token(i) for i in cut.tokenizer.encode([text])[0].ids]
    assert word in before and before == after


def test_a_corpus_that_is_one_huge_line_is_read_in_bounded_pieces(tmp_path):
    """The red team's: one 50 MB line took 8.2 GB. Read in pieces, no document is larger than
    MAX_LINE_BYTES, whatever the line."""
    from flare_onnx_export.prune import MAX_LINE_BYTES, _documents

    corpus = tmp_path / "one-line.txt"
    corpus.write_bytes(b"ciao mondo " * 300_000)  # 3.3 MB, no newline
    docs = list(_documents(corpus))
    assert len(docs) > 40 and max(len(d.encode()) for d in docs) <= MAX_LINE_BYTES
    assert sum(d.count("ciao") for d in docs) >= 299_000  # (a word cut at a piece's edge at most)


def test_comment_lines_are_comments_from_a_file_and_from_stdin_alike(tmp_path, monkeypatch):
    import io
    import sys

    from flare_onnx_export.prune import _documents

    data = b"# solo commenti\n# " + b"x" * 70_000 + b"\n# ancora\n"
    (tmp_path / "c.txt").write_bytes(data)
    assert list(_documents(tmp_path / "c.txt")) == []
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    assert list(_documents("-")) == []


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b\x08\x00" + bytes(200), "is compressed; decompress it first"),
    (bytes(range(256)) * 40, "is not UTF-8 text"),
])
def test_a_compressed_or_binary_corpus_is_refused(tmp_path, content, message):
    from flare_onnx_export.prune import _documents

    corpus = tmp_path / "corpus.gz"
    corpus.write_bytes(content)
    with pytest.raises(ExportError, match=message):
        list(_documents(corpus))


@pytest.mark.parametrize("argv, message", [
    (["--min-doc-freq", "2"], "--min-doc-freq counts lines of --prune-vocab's corpus"),
    (["--prune-words", "0"], "must be a whole number of at least 1"),
])
def test_pruning_flags_that_would_do_nothing_are_refused(tiny_checkpoint, tmp_path, capsys, argv, message):
    from flare_onnx.cli import main

    try:
        code = main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "b"), *argv])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_an_infinite_document_frequency_is_refused(tiny_checkpoint, tmp_path):
    from flare_onnx_export.prune import prune_checkpoint

    with pytest.raises(ExportError, match="min_doc_freq must be a count >= 1 or a share in"):
        prune_checkpoint(tiny_checkpoint, tmp_path / "c", "-", min_doc_freq=float("inf"), log=_quiet)
