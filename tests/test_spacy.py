"""The spaCy component, with real spaCy: found through its entry point, tokens matched by
character offsets, batches through the engine, to_disk/spacy.load both ways, and spaCy's own
scorer agreeing with the project's figures on the shared Italian corpora."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import InputError

from .conftest import SHARED_DATA, _export, _labelled

spacy = pytest.importorskip("spacy")
from spacy.tokens import Doc, Span  # noqa: E402
from spacy.training import Example  # noqa: E402

UPOS = sorted("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
HARD = [
    "L'Italia è bella, dell'anno scorso  ricordo 3,14 euro 🙂 e l'arte!",
    "Mario Rossi vive a Roma .",
    "   spazi   multipli\tcon tab\n e a capo",
    "C'era una volta un re: « Pinocchio » (1883).",
]


@pytest.fixture(scope="module")
def upos_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(_labelled(tmp_path_factory, "upos", "token-classification", UPOS), tmp_path_factory, "upos")


def _nlp(bundle: Path, **config):
    nlp = spacy.blank("it")
    nlp.add_pipe("flare_onnx", config={"bundle": str(bundle), **config})
    return nlp


def _first_overlap(token, words) -> str | None:
    """The label of the first model word overlapping the token's characters (a plain scan)."""
    for w in words:
        if w.start < token.idx + len(token) and w.end > token.idx:
            return w.label
    return None


def test_entities_follow_the_models_words_by_character_offsets(tiny_tagger, many_sentences):
    nlp = _nlp(tiny_tagger)
    model = nlp.get_pipe("flare_onnx").model
    texts = HARD + many_sentences[:40]
    # the same batches as nlp.pipe sends (an INT8 label can move with its batch-mates: #36)
    results = [r for i in range(0, len(texts), 7) for r in model.tag(texts[i : i + 7], window="sliding")]
    for doc, result in zip(nlp.pipe(texts, batch_size=7), results):
        for token in doc:
            label = _first_overlap(token, result.words)
            kind = "" if label in (None, "O") else label.split("-", 1)[1]
            assert token.ent_type_ == kind, (doc.text, token.text, label)
            assert token.ent_iob_ in ("B", "I", "O")
        spans = [(t.idx, t.idx + len(t)) for t in doc if not t.is_space]
        if spans == [(w.start, w.end) for w in result.words]:  # the two tokenizations agree
            assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == [
                (e.start, e.end, e.label) for e in result.entities
            ]


def test_part_of_speech_with_spaces_and_batches(upos_tagger, many_sentences):
    nlp = _nlp(upos_tagger)
    component = nlp.get_pipe("flare_onnx")
    calls = []
    tag = component.model.tag
    component.model.tag = lambda texts, **kw: calls.append(len(texts)) or tag(texts, **kw)
    texts = HARD + many_sentences[:16]
    docs = list(nlp.pipe(texts, batch_size=8))
    assert calls == [8, 8, 4]  # one engine request per batch
    for doc in docs:
        for token in doc:
            assert token.pos_ in UPOS or (token.is_space and token.pos_ == "SPACE"), (token.text, token.pos_)
    assert [t.pos_ for t in nlp(texts[0])] == [t.pos_ for t in docs[0]]
    assert len(nlp("")) == 0 and [t.pos_ for t in nlp("   ")] == ["SPACE"]  # nothing to tag, no error


def test_embedding_bundle_sets_doc_vectors_and_similarity(tiny_feature_bundle, sentences):
    nlp = _nlp(tiny_feature_bundle)
    model = flare_onnx.load(tiny_feature_bundle)
    a, b = nlp.pipe(sentences[:2])
    expected = model.embed(sentences[:2])  # the same batch (an INT8 vector moves with its batch-mates: #36)
    np.testing.assert_allclose([a.vector, b.vector], expected, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # spaCy's "no word vectors" warning would be an error here
        assert a.similarity(b) == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)
        assert b.similarity(a) == pytest.approx(a.similarity(b), abs=1e-7)
    assert pickle.loads(pickle.dumps(a)).similarity(b) == pytest.approx(a.similarity(b), abs=1e-6)


def test_bad_configs_say_what_is_wrong(tiny_tagger, upos_tagger, tmp_path):
    with pytest.raises(InputError, match="needs config"):
        spacy.blank("it").add_pipe("flare_onnx")
    with pytest.raises(InputError, match="annotates 'ents', not 'pos'"):
        _nlp(tiny_tagger, annotate="pos")
    nlp = _nlp(tiny_tagger, annotate="tag")  # any tagger's labels into token.tag_
    assert all(t.tag_ and not t.ent_type_ for t in nlp("Mario Rossi vive a Roma."))
    with pytest.raises(InputError, match="annotate must be one of"):
        _nlp(upos_tagger, annotate="lemma")
    with pytest.raises(InputError, match="option window must be one of"):
        _nlp(upos_tagger, window="tutto")
    with pytest.raises(flare_onnx.BundleError):
        _nlp(tmp_path / "nothing-here")
    nlp = _nlp(upos_tagger, load_options={"max_text_tokens": 16}, window="sliding")
    long = "una frase abbastanza lunga da superare il limite di sedici token per testo " * 3
    with pytest.raises(InputError, match="spaCy component 'flare_onnx': doc 2 of the batch \\('una frase.* tokens"):
        list(nlp.pipe(["Ciao.", "  ", long, "Piove."]))


def test_a_component_waiting_for_its_copied_bundle_passes_spacys_protocol_checks(tmp_path):
    """Loading a saved pipeline, spaCy runs ``isinstance(component, ListenedToComponent)`` —
    ``hasattr(component, "model")`` among others, in set order (hash-seeded) — before
    ``from_disk`` reads the copied bundle: ``model`` must then look absent (an AttributeError),
    not crash the load; used, it still says what is wrong in the package's own error."""
    from spacy import ty

    nlp = spacy.blank("it")
    component = nlp.add_pipe("flare_onnx", config={"bundle": str(tmp_path / "gone"), "copy_bundle": True})
    assert not hasattr(component, "model")
    assert not isinstance(component, ty.ListenedToComponent)
    with pytest.raises(InputError, match="is missing and no copy was read"):
        component.model


SAVED = r"""
import json, sys, spacy
nlp = spacy.load(sys.argv[1])
doc = nlp(sys.argv[2])
print(json.dumps({"modules": "flare_onnx.integrations.spacy" in sys.modules, "pos": [t.pos_ for t in doc]}))
"""


@pytest.mark.parametrize("copy_bundle", [False, True])
def test_to_disk_and_spacy_load_in_a_new_process(upos_tagger, tmp_path, copy_bundle):
    """The pipeline is saved and loaded by a process that never imports flare_onnx's component
    itself: spaCy finds the factory through the entry point. With copy_bundle the saved pipeline
    works after the original bundle is gone."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(upos_tagger, bundle)
    nlp = _nlp(bundle, copy_bundle=copy_bundle)
    text = HARD[0]
    expected = [t.pos_ for t in nlp(text)]
    nlp.to_disk(tmp_path / "pipeline")
    if copy_bundle:
        shutil.rmtree(bundle)
    proc = subprocess.run(
        [sys.executable, "-c", SAVED, str(tmp_path / "pipeline"), text], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"modules": True, "pos": expected}


# -- spaCy's scorer against the project's own figures (benchmarks.tagging), on the shared data --


def _gold_examples(nlp, sentences, scheme: str) -> list[Example]:
    from flare_onnx.engine import entity_runs

    out = []
    for text, spans, tags in sentences:
        words = [text[a:b] for a, b in spans]
        spaces = [True] * (len(words) - 1) + [False]
        predicted = Doc(nlp.vocab, words=words, spaces=spaces)
        reference = Doc(nlp.vocab, words=words, spaces=spaces)
        if scheme == "upos":
            for token, tag in zip(reference, tags):
                token.pos_ = tag
        else:
            runs = entity_runs(tags)  # the gold entities, read as seqeval reads the same tags
            reference.set_ents([Span(reference, i[0], i[-1] + 1, label=k) for k, i in runs], default="outside")
        assert predicted.text == text
        out.append(Example(predicted, reference))
    return out


@pytest.mark.parametrize(
    "scheme, path, limit",
    [
        ("upos", SHARED_DATA / "ud-italian-isdt" / "it_isdt-ud-test.conllu", None),
        ("ner", SHARED_DATA / "wikineural-it" / "val.conllu", 3000),
    ],
)
def test_spacys_scores_equal_the_projects(scheme, path, limit, upos_tagger, tiny_tagger):
    """nlp.evaluate()'s pos_acc / ents_f on the same words and labels as benchmarks.tagging's
    accuracy / seqeval entity F1 of the same bundle, within 0.1 point."""
    if not path.exists():
        pytest.skip(f"{path} is not here (the shared corpora sit beside the checkout)")
    from benchmarks.tagging import entity_prf, gold_word_labels, read

    test = read(path, scheme)[:limit]
    bundle = upos_tagger if scheme == "upos" else tiny_tagger
    nlp = _nlp(bundle, window="truncate")
    model = nlp.get_pipe("flare_onnx").model
    pred = gold_word_labels(test, [r.words for r in model.tag([t for t, _, _ in test])])
    gold = [tags for _, _, tags in test]
    scores = nlp.evaluate(_gold_examples(nlp, test, scheme), batch_size=64)
    if scheme == "upos":
        flat = np.array([t for row in pred for t in row]) == np.array([t for row in gold for t in row])
        assert abs(100 * scores["pos_acc"] - 100 * flat.mean()) < 0.1, (scores["pos_acc"], flat.mean())
    else:
        ours = entity_prf(gold, pred)["entity_f1"]
        assert ours > 0  # a random tagger still finds some entities: the comparison is not 0 == 0
        assert abs(100 * scores["ents_f"] - 100 * ours) < 0.1, (scores["ents_f"], ours)
