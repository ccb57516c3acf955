"""flare_onnx.pipeline against transformers' own pipelines on the same checkpoints.

The same inputs go through ``transformers.pipeline`` (PyTorch FP32) and ``flare_onnx.pipeline``
(the bundle's FP32 graph): keys, tokens, decoded strings, spans and labels must be identical,
scores within a tolerance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import flare_onnx
from flare_onnx import InputError, TaskNotAvailableError

TEXTS = [
    "Milano è una <mask> dell'Italia.",
    "L'Università di  Bologna è la più <mask> d'Europa, fondata nel 1088.",
    "Il <mask> di Roma e il <mask> di Napoli giocano domenica.",
]
PLAIN = [
    "Mario Rossi lavora all'Università di Bologna dal 1998.",
    "Ieri   a Torino, dopo l'incontro, la sindaca ha parlato   con Giulia.",
    "È arrivato un pacco per Sant'Agata de' Goti: 42,50 €!",
]


def _hf(task: str, checkpoint) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.pipeline(task, model=str(checkpoint), device="cpu")


def _same(ours: Any, theirs: Any, path: str = "") -> None:
    """Equal structure, keys and values; floats within 2e-4 (absolute)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{path}: keys {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            _same(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{path}: {len(ours)} items != {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert isinstance(ours, float) and math.isclose(ours, float(theirs), abs_tol=2e-4), f"{path}: {ours} != {theirs}"
    else:
        assert ours == theirs and type(ours) is type(theirs.item() if isinstance(theirs, np.generic) else theirs), (
            f"{path}: {ours!r} != {theirs!r}"
        )


@pytest.fixture(scope="module")
def fill(reference_bundle):
    return flare_onnx.pipeline("fill-mask", reference_bundle, precision="fp32")


@pytest.mark.parametrize(
    "inputs, options",
    [
        (TEXTS[0], {}),
        (TEXTS[1], {"top_k": 3}),
        (TEXTS[2], {"top_k": 2}),  # two masks: a list per mask, special tokens kept in "sequence"
        (TEXTS, {"top_k": 4}),
        ([TEXTS[0]], {}),  # a list of one text answers like the text itself
        (TEXTS[0], {"targets": ["roma", "città", "capitale", "gatto"]}),
        (TEXTS[1], {"targets": "antica", "top_k": 10}),
    ],
)
def test_fill_mask_matches_transformers(fill, reference_checkpoint, inputs, options):
    theirs = _hf("fill-mask", reference_checkpoint)(inputs, **options)
    ours = fill(inputs, **options)
    _same(ours, theirs)


def test_fill_mask_defaults_come_from_the_pipeline_and_calls_override_them(reference_bundle):
    pipe = flare_onnx.pipeline("fill-mask", reference_bundle, top_k=2)
    assert len(pipe(TEXTS[0])) == 2
    assert len(pipe(TEXTS[0], top_k=7)) == 7
    for candidate in pipe(TEXTS[0]):
        assert "<mask>" not in candidate["sequence"] and candidate["token_str"] in candidate["sequence"]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(tiny_tagger, tiny_tagger_checkpoint, strategy):
    hf = _hf("token-classification", tiny_tagger_checkpoint)
    ours = flare_onnx.pipeline("ner", tiny_tagger, precision="fp32", aggregation_strategy=strategy)
    # ignore nothing, so every token/word and its span is compared, not only the entities
    for ignore in (None, []):
        kwargs = {} if ignore is None else {"ignore_labels": ignore}
        _same(ours(PLAIN, **kwargs), hf(PLAIN, aggregation_strategy=strategy, **kwargs))
        _same(ours(PLAIN[1], **kwargs), hf(PLAIN[1], aggregation_strategy=strategy, **kwargs))


def test_entity_spans_slice_the_original_text(tiny_tagger):
    ner = flare_onnx.pipeline("ner", tiny_tagger, aggregation_strategy="first", ignore_labels=[])
    for text, entities in zip(PLAIN, ner(PLAIN)):
        assert entities
        for e in entities:
            assert text[e["start"] : e["end"]].lower().replace(" ", "") == e["word"].replace(" ", "")


@pytest.mark.parametrize(
    "inputs, options",
    [
        (PLAIN[0], {}),  # transformers' legacy shape: [{"label", "score"}]
        (PLAIN, {}),
        (PLAIN[0], {"top_k": None}),
        (PLAIN, {"top_k": 1}),
        (PLAIN, {"top_k": None, "function_to_apply": "none"}),
        (PLAIN[2], {"top_k": 2, "function_to_apply": "sigmoid"}),
    ],
)
def test_text_classification_matches_transformers(tiny_classifier, tiny_classifier_checkpoint, inputs, options):
    theirs = _hf("text-classification", tiny_classifier_checkpoint)(inputs, **options)
    ours = flare_onnx.pipeline("sentiment-analysis", tiny_classifier, precision="fp32")(inputs, **options)
    _same(ours, theirs)


def test_feature_extraction_matches_transformers(tiny_bundle, tiny_checkpoint):
    hf = _hf("feature-extraction", tiny_checkpoint)
    ours = flare_onnx.pipeline("feature-extraction", tiny_bundle, precision="fp32")
    for inputs in (PLAIN[0], PLAIN):
        theirs, mine = hf(inputs), ours(inputs)
        _same(mine, theirs)
    arrays = ours(PLAIN, return_tensors=True)
    assert [a.shape[:2] for a in arrays] == [(1, len(np.asarray(t)[0])) for t in hf(PLAIN)]


def test_int8_pipeline_agrees_with_fp32(reference_bundle):
    fp32 = flare_onnx.pipeline("fill-mask", reference_bundle, precision="fp32")
    int8 = flare_onnx.pipeline("fill-mask", reference_bundle)
    assert int8.model.precision == "int8"
    top = [c["token"] for c in fp32(TEXTS[0], top_k=5)]
    assert int8(TEXTS[0], top_k=1)[0]["token"] in top


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(""), "empty"),
        (lambda p: p(["ciao <mask>", 3]), "text 1 is int"),
        (lambda p: p(TEXTS[0], top_k=0), "top_k must be an integer from 1 to 100"),
        (lambda p: p(TEXTS[0], top_k=14610), "top_k must be an integer from 1 to 100"),
        (lambda p: p(TEXTS[0], targets=[]), "targets must be"),
        (lambda p: p(TEXTS[0], targets=["\u200b"]), "none of the targets"),
        (lambda p: p(TEXTS[0], aggregation_strategy="simple"), "has no option 'aggregation_strategy'"),
        (lambda p: p("nessuna maschera qui"), "has no <mask>"),
        (lambda p: p({"text": "a"}), "a string or a list of strings"),
    ],
)
def test_bad_calls_are_input_errors(fill, call, message):
    with pytest.raises(InputError, match=message):
        call(fill)


def test_bad_pipelines_are_clear_errors(tiny_bundle, tiny_classifier):
    with pytest.raises(InputError, match="pipeline task must be one of"):
        flare_onnx.pipeline("summarization", tiny_bundle)
    with pytest.raises(InputError, match="drop the tokenizer= argument"):
        flare_onnx.pipeline("fill-mask", tiny_bundle, tokenizer="osiria/flare-it")
    with pytest.raises(TaskNotAvailableError, match="tag needs a bundle exported with --task token-classification"):
        flare_onnx.pipeline("ner", tiny_bundle)
    with pytest.raises(InputError, match="runs on CPUs: device must be None, 'cpu' or -1, not 'cuda:0'"):
        flare_onnx.pipeline("fill-mask", tiny_bundle, device="cuda:0")
    assert flare_onnx.pipeline("fill-mask", tiny_bundle, device=-1).model.precision == "int8"
    with pytest.raises(InputError, match="has no option 'top_kk'"):
        flare_onnx.pipeline("text-classification", tiny_classifier, top_kk=2)
    clf = flare_onnx.pipeline("text-classification", tiny_classifier)
    with pytest.raises(InputError, match="function_to_apply must be one of"):
        clf("Che bella giornata!", function_to_apply="tanh")


def test_a_single_logit_classifier_scores_with_a_sigmoid_like_transformers(tmp_path):
    from flare_onnx_export import export_bundle, write_reference

    checkpoint = write_reference(tmp_path / "ckpt", tiny=True, task="text-classification", labels=["acceptable"])
    bundle = export_bundle(str(checkpoint), tmp_path / "bundle", log=lambda _: None)
    theirs = _hf("text-classification", checkpoint)(PLAIN)
    ours = flare_onnx.pipeline("text-classification", bundle, precision="fp32")(PLAIN)
    _same(ours, theirs)
    assert len({round(r["score"], 6) for r in ours}) > 1  # not a softmax of one logit (always 1.0)
    model = flare_onnx.load(bundle, precision="fp32")
    assert [r[0].score for r in model.classify(PLAIN)] == pytest.approx([r["score"] for r in ours], abs=1e-6)
