"""Pure numerics, on small arrays and no model."""

from __future__ import annotations

import numpy as np
import pytest

from flare_onnx.engine.postprocess import (
    WordLabel,
    aggregate_words,
    group_entities,
    l2_normalize,
    WindowPool,
    softmax,
    top_k,
)


def test_softmax_is_stable_and_sums_to_one():
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    p = softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], softmax(x[0] - 1000.0))
    assert x[0, 0] == 1000.0  # the input is left alone


def test_top_k_orders_and_clips():
    scores = np.array([[0.1, 0.5, 0.2, 0.9], [0.3, 0.3, 0.0, 0.4]])
    idx, vals = top_k(scores, 2)
    assert idx.tolist() == [[3, 1], [3, 0]]
    np.testing.assert_allclose(vals, [[0.9, 0.5], [0.4, 0.3]])
    idx, _ = top_k(scores, 10)
    assert idx.shape == (2, 4)


def test_window_pool_one_window_is_the_plain_mean():
    hidden = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)  # <s> a b c </s>
    pool = WindowPool(1, 2)
    pool.add(0, hidden, (0, 3))
    np.testing.assert_allclose(pool.result("mean")[0], hidden.mean(0))
    np.testing.assert_allclose(pool.result("cls")[0], hidden[0])


def test_window_pool_counts_overlapping_tokens_once():
    # text tokens t0..t5; window A holds t0..t3 and owns t0,t1,t2; window B holds t2..t5 and owns t3..t5
    tokens = np.array([[10.0], [11.0], [12.0], [13.0], [14.0], [15.0]])
    cls, sep = np.array([[1.0]]), np.array([[2.0]])
    a = np.vstack([cls, tokens[0:4], sep])
    b = np.vstack([cls * 3, tokens[2:6], sep])
    pool = WindowPool(1, 1)
    pool.add(0, a, (0, 3))
    pool.add(0, b, (1, 4))
    expected = (1.0 + tokens.sum() + 2.0) / 8  # <s>, six tokens once each, </s>
    np.testing.assert_allclose(pool.result("mean")[0, 0], expected)
    np.testing.assert_allclose(pool.result("cls")[0, 0], 2.0)  # mean of the windows' <s>


def test_l2_normalize_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    y = l2_normalize(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]])
    assert y.dtype == np.float32


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _probs(rows: list[int]) -> np.ndarray:
    p = np.full((len(rows), len(LABELS)), 0.05, dtype=np.float32)
    for i, r in enumerate(rows):
        p[i, r] = 0.8
    return p


def test_aggregate_words_first_average_max():
    text = "Mario Rossimo va"
    # tokens: mario | rossi ##mo | va
    word_ids = [0, 1, 1, 2]
    offsets = [(0, 5), (6, 11), (11, 13), (14, 16)]
    probs = _probs([1, 2, 0, 0])
    probs[2] = [0.0, 0.0, 0.1, 0.0, 0.9]  # the second sub-token of "Rossimo" is sure of I-LOC
    first = aggregate_words(text, probs, word_ids, offsets, LABELS, aggregation="first")
    assert [(w.word, w.label) for w in first] == [("Mario", "B-PER"), ("Rossimo", "I-PER"), ("va", "O")]
    assert (first[1].start, first[1].end) == (6, 13)
    maxed = aggregate_words(text, probs, word_ids, offsets, LABELS, aggregation="max")
    assert maxed[1].label == "I-LOC" and maxed[1].score == pytest.approx(0.9)
    avg = aggregate_words(text, probs, word_ids, offsets, LABELS, aggregation="average")
    assert avg[1].label == "I-LOC"  # mean: I-PER 0.45, I-LOC 0.475


def test_word_spans_leave_out_the_space_sentencepiece_tokens_carry():
    text = "Roma  è la  capitale"
    # SentencePiece: "▁è" spans "  è"'s last space and "è"; a lone "▁" piece spans a space
    word_ids = [0, 1, 2, 3, 3]
    offsets = [(0, 4), (5, 7), (7, 10), (10, 12), (12, 20)]
    words = aggregate_words(text, _probs([3, 0, 0, 0, 0]), word_ids, offsets, LABELS)
    assert [(w.word, w.start, w.end) for w in words] == [("Roma", 0, 4), ("è", 6, 7), ("la", 8, 10), ("capitale", 12, 20)]
    assert all(text[w.start : w.end] == w.word for w in words)


def test_sentencepiece_words_are_cut_at_punctuation_and_after_elisions():
    text = "Vive a Bologna. Dell'Orto (dell'Università) no"
    # SentencePiece pre-tokenizes at spaces only: "Bologna.", "Dell'Orto" and
    # "(dell'Università)" are one word each, split here as Italian corpora tokenize them
    word_ids = [0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5]
    offsets = [(0, 4), (5, 6), (7, 14), (14, 15), (16, 20), (20, 21), (21, 25),
               (26, 27), (27, 31), (31, 32), (32, 42), (42, 43), (44, 46)]
    probs = _probs([0, 0, 3, 0, 1, 0, 2, 0, 0, 0, 3, 0, 0])
    words = aggregate_words(text, probs, word_ids, offsets, LABELS)
    assert [(w.word, w.label) for w in words] == [
        ("Vive", "O"), ("a", "O"), ("Bologna", "B-LOC"), (".", "O"), ("Dell'", "B-PER"), ("Orto", "I-PER"),
        ("(", "O"), ("dell'", "O"), ("Università", "B-LOC"), (")", "O"), ("no", "O"),
    ]
    assert [e.text for e in group_entities(text, words)] == ["Bologna", "Dell'Orto", "Università"]


def _w(label: str, start: int, end: int, score: float = 0.9) -> WordLabel:
    return WordLabel(word="", label=label, score=score, start=start, end=end)


def test_group_entities_iob2():
    text = "Mario Rossi vive a Roma Nord e Milano"
    words = [
        _w("B-PER", 0, 5, 0.8), _w("I-PER", 6, 11, 0.6), _w("O", 12, 16), _w("O", 17, 18),
        _w("B-LOC", 19, 23), _w("I-LOC", 24, 28), _w("O", 29, 30), _w("B-LOC", 31, 37),
    ]
    ents = group_entities(text, words)
    assert [(e.label, e.text) for e in ents] == [("PER", "Mario Rossi"), ("LOC", "Roma Nord"), ("LOC", "Milano")]
    assert ents[0].score == pytest.approx(0.7)


def test_group_entities_b_starts_new_and_type_change_splits():
    text = "Roma Milano Bianchi"
    words = [_w("B-LOC", 0, 4), _w("B-LOC", 5, 11), _w("I-PER", 12, 19)]
    assert [e.text for e in group_entities(text, words)] == ["Roma", "Milano", "Bianchi"]


def test_group_entities_plain_labels_group_runs():
    text = "il gatto nero"
    words = [_w("DET", 0, 2), _w("NOUN", 3, 8), _w("NOUN", 9, 13)]
    assert [(e.label, e.text) for e in group_entities(text, words)] == [("DET", "il"), ("NOUN", "gatto nero")]


@pytest.mark.parametrize("labels, bioes, iob2", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", [0, 1]), ("LOC", [3])], [("PER", [0, 1]), ("O", [2]), ("LOC", [3])]),
    (["S-PER", "S-PER", "B-LOC", "E-LOC", "I-LOC"], [("PER", [0]), ("PER", [1]), ("LOC", [2, 3]), ("LOC", [4])],
     [("S-PER", [0, 1]), ("LOC", [2]), ("E-LOC", [3]), ("LOC", [4])]),
    (["I-ORG", "I-ORG", "B-ORG"], [("ORG", [0, 1]), ("ORG", [2])], [("ORG", [0, 1]), ("ORG", [2])]),
])
def test_one_grouping_rule_read_two_ways(labels, bioes, iob2):
    """tag() reads BIOES/BILOU too; the transformers-compatible pipeline reads it as transformers does."""
    from flare_onnx.engine import entity_runs

    assert entity_runs(labels) == bioes
    assert entity_runs(labels, scheme="iob2") == iob2
