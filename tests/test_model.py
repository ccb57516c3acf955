"""The four task verbs on tiny bundles: results, agreement with PyTorch, and bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flare_onnx
from flare_onnx import InferenceError, InputError, TaskNotAvailableError

from .conftest import NER_LABELS, SENTIMENT, poison_outputs


@pytest.fixture(scope="module")
def mlm(tiny_bundle: Path) -> flare_onnx.FlareModel:
    return flare_onnx.load(tiny_bundle, precision="fp32")


@pytest.fixture(scope="module")
def mlm_int8(tiny_bundle: Path) -> flare_onnx.FlareModel:
    return flare_onnx.load(tiny_bundle)


@pytest.fixture(scope="module")
def tagger(tiny_tagger: Path) -> flare_onnx.FlareModel:
    return flare_onnx.load(tiny_tagger, precision="fp32")


@pytest.fixture(scope="module")
def classifier(tiny_classifier: Path) -> flare_onnx.FlareModel:
    return flare_onnx.load(tiny_classifier, precision="fp32")


@pytest.fixture(scope="module")
def torch_mlm(tiny_checkpoint: Path):
    from flare_onnx_export.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint, source="tiny").model


def _torch_logits(model, tokenizer, text: str) -> tuple[np.ndarray, list[int]]:
    import torch

    ids = tokenizer.encode(text).ids
    with torch.inference_mode():
        t = torch.tensor([ids])
        return model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].numpy(), ids


# -- fill-mask ----------------------------------------------------------------------------


def test_fill_mask_shapes_and_scores(mlm):
    out = mlm.fill_mask(["Roma è la <mask> d'Italia.", "Il <mask> dorme sul <mask>."], top_k=4)
    assert [len(masks) for masks in out] == [1, 2]
    for masks in out:
        for preds in masks:
            assert len(preds) == 4
            scores = [p.score for p in preds]
            assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
            assert all(mlm.tokenizer.id_to_token(p.token_id) == p.token for p in preds)


def test_fill_mask_fp32_matches_pytorch(mlm, torch_mlm, sentences):
    from flare_onnx_export.sample import mask_sentences

    texts = mask_sentences(sentences[:60], "<mask>")
    got = mlm.fill_mask(texts, top_k=5)
    tok = mlm.tokenizer.tokenizer
    for text, masks in zip(texts, got):
        logits, ids = _torch_logits(torch_mlm, tok, text)
        rows = [i for i, t in enumerate(ids) if t == mlm.manifest.special.mask_id]
        for row, preds in zip(rows, masks):
            expected = np.argsort(-logits[row])[:5]
            assert [p.token_id for p in preds][0] == expected[0]
            probs = np.exp(logits[row] - logits[row].max())
            probs /= probs.sum()
            np.testing.assert_allclose([p.score for p in preds], probs[[p.token_id for p in preds]], rtol=1e-4, atol=1e-6)


def test_results_do_not_depend_on_batching(mlm):
    texts = [("parola " * n + "<mask>").strip() for n in (1, 25, 3, 35, 7, 2, 20)]
    together = mlm.fill_mask(texts, top_k=3)
    small = flare_onnx.load(mlm.path, precision="fp32", max_batch_tokens=64, max_batch_size=2)
    apart = small.fill_mask(texts, top_k=3)
    for a, b in zip(together, apart):
        assert [p.token_id for p in a[0]] == [p.token_id for p in b[0]]
        np.testing.assert_allclose([p.score for p in a[0]], [p.score for p in b[0]], rtol=1e-4)


def test_mask_past_the_kept_tokens_is_an_error(mlm):
    with pytest.raises(InputError, match=r"text 0 has a <mask> at token \d+, past the 126 tokens"):
        mlm.fill_mask(["parola " * 300 + "<mask>"])


def test_thousands_of_masks_get_a_clear_error(mlm):
    with pytest.raises(InputError, match="past the 126 tokens"):
        mlm.fill_mask(["<mask> " * 3000])
    out = mlm.fill_mask(["<mask> " * 100], top_k=1)  # within the window: one answer per mask
    assert len(out[0]) == 100


def test_uppercase_mask_is_a_mask(mlm):
    assert len(mlm.fill_mask(["ROMA È LA <MASK>."])[0]) == 1


# -- embed ----------------------------------------------------------------------------------


def test_embed_shape_norm_and_order(mlm, sentences):
    texts = sentences[:50]
    emb = mlm.embed(texts)
    assert emb.shape == (50, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.stack([mlm.embed([t])[0] for t in texts[:10]])
    np.testing.assert_allclose(emb[:10], one_by_one, atol=1e-5)


def test_embed_matches_pytorch_mean_pooling(mlm, torch_mlm, sentences):
    import torch

    tok = mlm.tokenizer.tokenizer
    emb = mlm.embed(sentences[:20], normalize=False)
    cls = mlm.embed(sentences[:20], pooling="cls", normalize=False)
    for i, text in enumerate(sentences[:20]):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.inference_mode():
            hidden = torch_mlm.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        np.testing.assert_allclose(emb[i], hidden.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(cls[i], hidden[0].numpy(), atol=1e-5)


def test_sliding_equals_truncate_for_short_texts(mlm, sentences):
    np.testing.assert_allclose(mlm.embed(sentences[:5], window="sliding"), mlm.embed(sentences[:5]), atol=1e-6)


def test_sliding_covers_long_texts(mlm, sentences):
    long = " ".join(sentences[:20])
    assert len(mlm.tokenizer.encode([long])[0].ids) > 300
    truncated = mlm.embed([long])[0]
    sliding = mlm.embed([long], window="sliding", stride=32)[0]
    assert float(truncated @ sliding) < 0.9999  # the tail changed the embedding
    tail = mlm.embed([" ".join(sentences[:20])], window="sliding", stride=0)[0]
    assert np.isfinite(tail).all() and float(tail @ sliding) > 0.5


def test_feature_extraction_bundle_embeds_but_does_not_fill(tiny_feature_bundle, mlm, sentences):
    feat = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    np.testing.assert_allclose(feat.embed(sentences[:5]), mlm.embed(sentences[:5]), atol=1e-5)
    with pytest.raises(TaskNotAvailableError, match=r"exported for 'feature-extraction'.*--task fill-mask"):
        feat.fill_mask(["<mask>"])


# -- tag ------------------------------------------------------------------------------------


def test_tag_words_and_entities_have_exact_offsets(tagger):
    texts = ["Mario Rossi vive a Roma, vicino all'Università La Sapienza.", "Parola  con   spazi\te tab"]
    for text, result in zip(texts, tagger.tag(texts)):
        assert result.words, text
        for w in result.words:
            assert text[w.start : w.end] == w.word and w.label in NER_LABELS
        for e in result.entities:
            assert text[e.start : e.end] == e.text and e.label in {"PER", "LOC", "ORG"}
    words = [w.word for w in tagger.tag(["l'uomo di Milano"])[0].words]
    assert words == ["l", "'", "uomo", "di", "Milano"]


def test_tag_matches_pytorch_argmax(tagger, tiny_tagger_checkpoint, sentences):
    import torch

    from flare_onnx_export.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_tagger_checkpoint, source="t").model
    tok = tagger.tokenizer.tokenizer
    for text, result in zip(sentences[:20], tagger.tag(sentences[:20])):
        enc = tok.encode(text)
        with torch.inference_mode():
            ids = torch.tensor([enc.ids])
            labels = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].argmax(-1).tolist()
        first = {}
        for pos, word in enumerate(enc.word_ids):
            if word is not None and word not in first:
                first[word] = NER_LABELS[labels[pos]]
        assert [w.label for w in result.words] == [first[i] for i in sorted(first)]


def test_tag_sliding_labels_every_word_of_a_long_text(tagger, sentences):
    long = " ".join(sentences[:15])
    n_words = len(tagger.tokenizer.encode([long])[0].word_ids and set(tagger.tokenizer.encode([long])[0].word_ids))
    truncated = tagger.tag([long])[0].words
    sliding = tagger.tag([long], window="sliding", stride=16)[0].words
    assert len(truncated) < len(sliding) == n_words
    assert sliding[-1].end == len(long.rstrip())


# -- classify -------------------------------------------------------------------------------


def test_classify(classifier):
    out = classifier.classify(["Che bella giornata!", "Che schifo."], top_k=None)
    for labels in out:
        assert sorted(label.label for label in labels) == sorted(SENTIMENT)
        assert sum(label.score for label in labels) == pytest.approx(1.0, abs=1e-5)
    assert len(classifier.classify(["ok"])[0]) == 1


# -- errors ---------------------------------------------------------------------------------


def test_task_not_available(mlm, tagger, classifier):
    with pytest.raises(TaskNotAvailableError, match=r"tag needs a bundle exported with --task token-classification"):
        mlm.tag(["testo"])
    with pytest.raises(TaskNotAvailableError, match="fill-mask"):
        tagger.fill_mask(["<mask>"])
    with pytest.raises(TaskNotAvailableError, match="text-classification"):
        tagger.classify(["testo"])
    with pytest.raises(TaskNotAvailableError):
        classifier.embed(["testo"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.fill_mask([]), "empty list"),
        (lambda m: m.fill_mask("Roma è la <mask>."), "not a single string"),
        (lambda m: m.fill_mask(["ok <mask>", None]), "text 1 is NoneType, not str"),
        (lambda m: m.fill_mask([""]), "text 0 is empty"),
        (lambda m: m.fill_mask(["Roma è la capitale."]), "text 0 has no <mask> token to fill"),
        (lambda m: m.fill_mask(["<mask>"], top_k=0), "top_k must be at least 1, not 0"),
        (lambda m: m.embed(["ok"], pooling="sum"), "pooling must be one of 'mean', 'cls', 'max', not 'sum'"),
        (lambda m: m.embed(["ok"], window="all"), "window must be one of 'truncate', 'sliding'"),
        (lambda m: m.embed(["\x00\x01"]), "text 0 has no tokens after normalization"),
    ],
)
def test_bad_input(mlm, call, message):
    with pytest.raises(InputError, match=message):
        call(mlm)


def test_bad_options_at_load(tiny_bundle):
    with pytest.raises(InputError, match="threads must be at least 1, not 0"):
        flare_onnx.load(tiny_bundle, threads=0)
    with pytest.raises(InputError, match="max_batch_tokens must be at least 16, not -1"):
        flare_onnx.load(tiny_bundle, max_batch_tokens=-1)


def test_the_session_keeps_no_second_copy_of_the_graph(tiny_bundle, sentences):
    """onnxruntime's Python wrapper would hold the serialized graph for the session's whole
    life (17 MB of the reference bundle's serving peak); the loaded model lets it go."""
    model = flare_onnx.load(tiny_bundle, precision="int8")
    assert not getattr(model.session.inner, "_model_bytes", None)
    assert model.embed(sentences[:2]).shape[0] == 2


def test_non_finite_outputs_fail_loudly(tiny_bundle):
    model = flare_onnx.load(tiny_bundle, precision="fp32")
    poison_outputs(model, np.nan)
    with pytest.raises(InferenceError, match="non-finite values in 'last_hidden_state'"):
        model.embed(["ciao"])


# -- bulk work: one batch per thread ----------------------------------------------------------


def test_bulk_work_runs_one_batch_per_thread_with_the_same_results(tiny_bundle, many_sentences):
    texts = many_sentences[:120]
    interactive = flare_onnx.load(tiny_bundle, precision="fp32", threads=2)
    bulk = flare_onnx.load(tiny_bundle, precision="fp32", threads=2, workload="bulk", max_batch_tokens=128)
    assert (interactive.streams, bulk.streams) == (1, 2)
    assert "one batch per CPU at once" in bulk.backend_choice
    assert "one batch per CPU" not in interactive.backend_choice
    np.testing.assert_allclose(bulk.embed(texts), interactive.embed(texts), atol=1e-5)  # every text in its place
    np.testing.assert_allclose(bulk.embed(texts[:1]), interactive.embed(texts[:1]), atol=1e-5)  # a lone text
    assert flare_onnx.load(tiny_bundle, threads=1, workload="bulk").streams == 1  # one thread: one plain session


class _FailingOnce:
    """The onnxruntime session inside a streamed OrtSession, failing (or poisoning its output) on call ``at``."""

    def __init__(self, real, at: int, how: str) -> None:
        self.real, self.at, self.how, self.calls = real, at, how, 0
        self.lock = threading.Lock()  # the streams call run() from two threads at once

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run(self, names, feeds):
        with self.lock:
            self.calls += 1
            call = self.calls
        out = self.real.run(names, feeds)
        if call == self.at and self.how == "raise":
            raise RuntimeError("onnxruntime: something broke")
        if call == self.at:
            out[0][...] = np.nan
        return out


@pytest.mark.parametrize("how, message", [("raise", "session failed on a batch"), ("nan", "non-finite values")])
def test_a_failing_stream_is_an_inference_error_and_the_model_goes_on(tiny_bundle, many_sentences, how, message):
    texts = many_sentences[:120]
    bulk = flare_onnx.load(tiny_bundle, precision="fp32", threads=2, workload="bulk", max_batch_tokens=128)
    expected = bulk.embed(texts)
    real = bulk.session.inner
    bulk.session.inner = _FailingOnce(real, at=3, how=how)
    with pytest.raises(InferenceError, match=message):
        bulk.embed(texts)
    bulk.session.inner = real
    np.testing.assert_array_equal(bulk.embed(texts), expected)  # the streams still run, in order


# -- properties -----------------------------------------------------------------------------

weird = st.lists(
    st.one_of(
        st.characters(),  # surrogates, NUL, controls, RTL, emoji, combining marks
        st.sampled_from(["<mask>", "\u202e", "\u0301", "🙂", "\x00", " ", "\n", "a" * 300]),
    ),
    max_size=200,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=weird)
def test_property_any_text_gives_a_result_or_input_error(mlm_int8, tagger, text):
    for call in (
        lambda: mlm_int8.embed([text]),
        lambda: mlm_int8.fill_mask([text]),
        lambda: tagger.tag([text], window="sliding"),
    ):
        try:
            out = call()
        except InputError:
            continue
        assert len(out) == 1
