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
