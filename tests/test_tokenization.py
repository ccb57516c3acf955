"""tokenizer.json against transformers' BertTokenizer, windows, batches and input checks."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flare_onnx.engine.tokenization import SpecialTokens
from flare_onnx.errors import InputError
from flare_onnx.engine.batching import pad_batch, plan_batches
from flare_onnx.engine.tokenization import TextEncoder, check_texts
from flare_onnx_export.exporter import TOKENIZER_PROBES
from flare_onnx_export.sample import read_corpus
from flare_onnx_export.tokenizer import build_tokenizer, load_reference_tokenizer

from .conftest import SHARED_DATA


@pytest.fixture(scope="module")
def pair(reference_checkpoint: Path):
    return build_tokenizer(reference_checkpoint, pair_type_id=0), load_reference_tokenizer(reference_checkpoint)


def _assert_same(fast, slow, texts: list[str]) -> None:
    fast_ids = [e.ids for e in fast.encode_batch(texts)]
    for text, ids in zip(texts, fast_ids):
        assert ids == slow(text)["input_ids"], text


def test_same_ids_as_bert_tokenizer_on_thousands_of_sentences(pair, sentences, many_sentences):
    fast, slow = pair
    texts = sentences + many_sentences + TOKENIZER_PROBES
    assert len(texts) >= 3000
    _assert_same(fast, slow, texts)


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("Città", ["città"]),  # lowercased, accent kept
        ("l'uomo", ["l", "'", "uomo"]),
        ("d'Italia", ["d", "'", "italia"]),
        ("Roma è la <mask>.", ["roma", "è", "la", "<mask>", "."]),
        ("la<mask>di", ["la", "<mask>", "di"]),
        ("PERCHÉ", ["perché"]),
    ],
)
def test_italian_specifics(pair, text, pieces):
    fast, slow = pair
    tokens = fast.encode(text, add_special_tokens=False).tokens
    words: list[str] = []
    for t in tokens:  # glue ##continuations back onto their word
        if t.startswith("##") and words:
            words[-1] += t[2:]
        else:
            words.append(t)
    assert words[: len(pieces)] == pieces
    assert fast.encode(text).ids == slow(text)["input_ids"]
    assert fast.encode(text).tokens[0] == "<s>" and fast.encode(text).tokens[-1] == "</s>"


def test_pairs_are_joined_the_bert_way_with_zero_segments(pair):
    fast, slow = pair
    enc = fast.encode("Il gatto dorme.", "Piove a Roma.")
    assert enc.ids == slow("Il gatto dorme.", "Piove a Roma.")["input_ids"]
    assert enc.tokens.count("</s>") == 2 and enc.tokens[0] == "<s>"
    assert set(enc.type_ids) == {0}  # type_vocab_size is 1


@pytest.mark.parametrize("name", ["ud-italian-isdt/it_isdt-ud-test.conllu", "ud-italian-isdt/it_isdt-ud-dev.conllu", "wikineural-it/val.conllu"])
def test_same_ids_on_shared_corpora(pair, name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not beside the checkout")
    texts = read_corpus(path, limit=3000)
    assert len(texts) > 400
    _assert_same(*pair, texts)


italian = st.lists(
    st.sampled_from(list("abcdefghilmnopqrstuvzàèéìòùÀÈÉÌÒÙ'’.,;:!?«»-–()0123456789 \t\n") + ["<mask>", "<s>", "</s>", "<MASK>"]),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(italian)
def test_property_same_ids_on_italian_alphabet(pair, text):
    fast, slow = pair
    assert fast.encode(text).ids == slow(text)["input_ids"]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_property_same_ids_on_arbitrary_unicode(pair, text):
    fast, slow = pair
    assert fast.encode(text).ids == slow(text)["input_ids"]


@pytest.mark.slow  # ~300,000 code points through the slow Python tokenizer
def test_same_ids_for_every_code_point(pair):
    """Each code point inside a word and after a digit: controls, spaces, punctuation, CJK,
    newer scripts. The pieces (``a{cp}b 0{cp}``, apart by spaces, which BERT splits on first)
    go 64 to a text, one call each instead of 300,000; a text that differs is checked piece by
    piece, so a mismatch still names its code point."""
    fast, slow = pair
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn"]
    cps += list(range(0xE0080, 0xE00FF))  # some unassigned ones too
    pieces = [f"a{chr(cp)}b 0{chr(cp)}" for cp in cps]
    groups = [(cps[i : i + 64], pieces[i : i + 64]) for i in range(0, len(cps), 64)]
    texts = [" ".join(group) for _, group in groups]
    mismatched = []
    for (group_cps, group), text, enc in zip(groups, texts, fast.encode_batch(texts)):
        if enc.ids != slow(text)["input_ids"]:
            mismatched += [hex(cp) for cp, piece in zip(group_cps, group)
                           if fast.encode(piece).ids != slow(piece)["input_ids"]]
            mismatched += [] if mismatched else [f"a group from {hex(group_cps[0])}"]
    assert mismatched == []


# -- windows and batches ---------------------------------------------------------------

SPECIAL = SpecialTokens(cls_id=0, sep_id=2, pad_id=1, unk_id=3, mask_id=4, mask_token="<mask>")


@pytest.fixture(scope="module")
def encoder(reference_checkpoint: Path) -> TextEncoder:
    return TextEncoder(build_tokenizer(reference_checkpoint).to_str(), SPECIAL, max_length=12)


def test_truncate_keeps_one_window(encoder):
    enc = encoder.encode(["uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici"])
    windows = encoder.windows(enc, sliding=False, stride=0)
    assert len(windows) == 1
    assert len(windows[0].ids) == 12 and windows[0].ids[0] == 0 and windows[0].ids[-1] == 2


@pytest.mark.parametrize("n_words, stride", [(5, 3), (10, 0), (10, 4), (37, 3), (100, 9)])
def test_sliding_windows_cover_every_token_once(encoder, n_words, stride):
    text = " ".join(["casa"] * n_words)
    enc = encoder.encode([text])
    windows = encoder.windows(enc, sliding=True, stride=stride)
    owned = np.zeros(len(enc[0].ids), dtype=int)
    for w in windows:
        assert len(w.ids) <= 12
        lo, hi = w.keep
        owned[w.start + lo : w.start + hi] += 1
        assert list(w.ids[1:-1]) == enc[0].ids[w.start : w.start + len(w.ids) - 2]
    assert owned.tolist() == [1] * len(enc[0].ids)


def test_bad_stride_is_refused(encoder):
    with pytest.raises(InputError, match="stride must be between 0 and 9"):
        encoder.windows(encoder.encode(["casa"]), sliding=True, stride=10)


def test_plan_batches_respects_budget_and_sorts():
    lengths = [5, 50, 7, 3, 50, 9, 120]
    batches = list(plan_batches(lengths, max_tokens=100, max_batch=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def _greedy(lengths: list[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """The obvious plan: fill each batch in length order until a budget would break."""
    out: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if out and len(out[-1]) < max_batch and (len(out[-1]) + 1) * lengths[i] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _cost(lengths: list[int], batches: list[list[int]]) -> int:
    from flare_onnx.engine.batching import BATCH_OVERHEAD_TOKENS

    return sum(len(b) * max(lengths[i] for i in b) + BATCH_OVERHEAD_TOKENS for b in batches)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 512), min_size=1, max_size=150),
    max_tokens=st.integers(16, 8192),
    max_batch=st.integers(1, 64),
)
def test_plan_batches_pads_least_within_the_budgets(lengths, max_tokens, max_batch):
    batches = list(plan_batches(lengths, max_tokens=max_tokens, max_batch=max_batch, max_cells=4 * 512**2))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or (len(b) <= max_batch and len(b) * longest <= max_tokens and len(b) * longest**2 <= 4 * 512**2)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    # never worse than filling batches greedily (padded tokens plus the per-batch price)
    greedy = [b for b in _greedy(lengths, max_tokens, max_batch)]
    if all(len(b) * max(lengths[i] for i in b) ** 2 <= 4 * 512**2 or len(b) == 1 for b in greedy):
        assert _cost(lengths, batches) <= _cost(lengths, greedy)


def test_pad_batch():
    ids, mask = pad_batch([np.array([0, 5, 2]), np.array([0, 2])], pad_id=1)
    assert ids.tolist() == [[0, 5, 2], [0, 2, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize(
    "texts, message",
    [
        ("una frase", r"takes a list of texts, not a single string: use embed\(\[text\]\)"),
        ([], "empty list"),
        (["ok", 3], "text 1 is int, not str"),
        (["ok", ""], "text 1 is empty or only whitespace"),
        (["  \n\t"], "text 0 is empty or only whitespace"),
        (["ok", "bad \ud800 surrogate"], "text 1 is not valid Unicode"),
        (None, "takes a list of strings, not NoneType"),
    ],
)
def test_check_texts_errors(texts, message):
    with pytest.raises(InputError, match=message):
        check_texts(texts, verb="embed")


def test_threads_follow_the_cgroup_cpu_quota(tmp_path):
    """A container's quota, not the host's cores: v2 cpu.max, v1 CFS files, and no quota."""
    import os

    from flare_onnx.engine.session import available_cpus

    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU: one thread
    assert available_cpus(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert available_cpus(v2) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert available_cpus(v1) == affinity
    assert available_cpus(tmp_path / "missing") == affinity
