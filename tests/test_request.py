"""The one request path: what a request may ask is counted before the work it would cost, and a
bad text is reported with its own place while the others still run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flare_onnx
from flare_onnx import InputError, RequestTooLarge, TextError
from flare_onnx.engine import Limits


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return flare_onnx.load(tiny_bundle, precision="fp32")


@pytest.fixture
def no_tokenizing(model, monkeypatch):
    """Fail the test if the request reaches the tokenizer."""
    def refuse(*args, **kwargs):
        raise AssertionError("the request was tokenized before it was refused")

    monkeypatch.setattr(model.tokenizer, "encode", refuse)


@pytest.fixture
def no_windows(model, monkeypatch):
    """Fail the test if the request's windows are made."""
    def refuse(*args, **kwargs):
        raise AssertionError("the windows were made before the request was refused")

    monkeypatch.setattr(model.tokenizer, "windows", refuse)


def test_a_prefix_counts_in_the_request_characters_before_any_work(model, no_tokenizing):
    with pytest.raises(RequestTooLarge, match="at most 131072 per request"):
        model.request("embed", ["a"] * 64, {"prefix": "ciao " * 500}, limits=Limits.SERVICE)


def test_a_prefix_counts_in_each_texts_characters(model, no_tokenizing):
    with pytest.raises(TextError, match="text 0 has 10001 characters with its 10000-character prefix; at most 10000"):
        model.request("embed", ["a"], {"prefix": "p" * 10_000}, limits=Limits.SERVICE)


def test_a_stored_prompt_counts_like_a_prefix(model, monkeypatch, no_tokenizing):
    monkeypatch.setattr(type(model), "prompts", property(lambda self: {"long": "x" * 9_999}))
    with pytest.raises(TextError, match="10001 characters with its 9999-character prefix"):
        model.request("embed", ["ab"], {"prompt": "long"}, limits=Limits.SERVICE)


def test_sliding_window_work_counts_every_window_before_they_are_made(model, no_windows):
    content = model.manifest.max_length - 2
    text = "ciao " * 2_000  # inside the character limits
    with pytest.raises(RequestTooLarge, match="a smaller stride reads fewer"):
        model.request("embed", [text] * 5, {"window": "sliding", "stride": content - 1}, limits=Limits.SERVICE)


def test_the_default_stride_over_the_same_texts_is_admitted(model):
    request = model.request("embed", ["ciao " * 1_000] * 2, {"window": "sliding"}, limits=Limits.SERVICE)
    assert request.tokens == sum(len(w.ids) for w in request.windows)  # what is counted is what runs
    assert request.tokens <= Limits.SERVICE.max_tokens


def test_a_bad_text_is_named_by_its_own_place(model):
    with pytest.raises(TextError) as caught:
        model.request("embed", ["Il gatto dorme.", "Piove.", "   "])
    assert caught.value.index == 2 and str(caught.value) == "text 2 is empty or only whitespace"


def test_predict_each_isolates_bad_texts_and_runs_the_rest_as_one(model):
    texts = ["Il gatto dorme.", "", 5, "Piove a Milano."]
    outcomes = model.predict_each("embed", texts)
    assert [o.error for o in outcomes] == [None, "the text is empty or only whitespace", "the text is int, not str", None]
    expected = model.embed(["Il gatto dorme.", "Piove a Milano."])
    np.testing.assert_allclose(np.stack([outcomes[0].result, outcomes[3].result]), expected, atol=1e-6)


def test_predict_each_refuses_a_bad_option_for_the_whole_chunk(model):
    with pytest.raises(InputError, match="option pooling must be one of"):
        model.predict_each("embed", ["Il gatto dorme."], {"pooling": "sum"})


# -- the work admitted is bounded by the limits, whatever the options -------------------------

SMALL = Limits(max_texts=8, max_chars=400, max_request_chars=1_000, max_tokens=600, max_candidates=50)


@given(
    texts=st.lists(st.text(min_size=1, max_size=500), min_size=1, max_size=10),
    prefix=st.text(max_size=600),
    window=st.sampled_from(["truncate", "sliding"]),
    stride=st.one_of(st.none(), st.integers(min_value=0, max_value=200)),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_admitted_request_is_within_every_limit(model, texts, prefix, window, stride):
    try:
        request = model.request("embed", texts, {"prefix": prefix, "window": window, "stride": stride}, limits=SMALL)
    except InputError:
        return  # refused: a limit, or a text the model cannot take
    assert len(request.texts) <= SMALL.max_texts
    assert all(len(t) <= SMALL.max_chars for t in request.texts)  # prefix included
    assert sum(len(t) for t in request.texts) <= SMALL.max_request_chars
    assert sum(len(w.ids) for w in request.windows) <= request.tokens <= SMALL.max_tokens


@given(texts=st.lists(st.sampled_from(["Roma è la <mask>.", "<mask> <mask> <mask> dorme.", "ciao"]), min_size=1, max_size=8),
       top_k=st.integers(min_value=1, max_value=100))
@settings(max_examples=60, deadline=None)
def test_fill_mask_candidates_admitted_are_within_the_limit(model, texts, top_k):
    """(The tiny bundle is a fill-mask bundle.)"""
    try:
        request = model.request("fill-mask", texts, {"top_k": top_k}, limits=SMALL)
    except InputError:
        return
    assert request.candidates <= SMALL.max_candidates


def test_options_are_parsed_once_per_job_not_per_chunk(model, monkeypatch):
    """A job resolves its options once; every chunk's request takes them as they are."""
    from flare_onnx.engine import get_task

    spec = get_task("embed")
    resolved = spec.resolve({"pooling": "cls"})
    calls = []
    real = type(spec).parse_options
    monkeypatch.setattr(type(spec), "parse_options", lambda self, o=None: calls.append(o) or real(self, o))
    for chunk in (["Il gatto dorme."], ["Piove.", "Roma."]):
        model.predict_each("embed", chunk, resolved)
    assert calls == []
    model.predict_each("embed", ["Il gatto dorme."], {"pooling": "cls"})  # a plain mapping is parsed
    assert len(calls) == 1
