"""The full-size Flare-IT-shaped reference checkpoint: its shape, its export, and PyTorch agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flare_onnx
from flare_onnx_export.reference import FLARE_IT_CONFIG

pytestmark = pytest.mark.slow

#: sha256 of the full-size reference checkpoint's vocab.txt (tokenizers' WordPiece trainer on the shipped sample)
VOCAB_SHA256 = "42ea4e21c6196c00c4c40c66f67066c325c4c5d147a620ac409c41e1e70b6891"


def test_reference_has_flare_it_shape_and_files(reference_checkpoint):
    import torch

    names = {p.name for p in reference_checkpoint.iterdir()}
    assert {"config.json", "pytorch_model.bin", "tokenizer_config.json", "vocab.txt"} <= names
    config = json.loads((reference_checkpoint / "config.json").read_text())
    for key, value in FLARE_IT_CONFIG.items():
        assert config[key] == value, key
    assert json.loads((reference_checkpoint / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    vocab = (reference_checkpoint / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 14_610 and vocab[:5] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert "città" in vocab and "perché" in vocab
    state = torch.load(reference_checkpoint / "pytorch_model.bin", weights_only=True)
    unique = {v.data_ptr(): v.numel() for v in state.values()}
    assert sum(unique.values()) == 16_618_770
    assert 66.0e6 < (reference_checkpoint / "pytorch_model.bin").stat().st_size < 67.0e6


def test_bundle_sizes(reference_bundle, reference_checkpoint):
    fp32 = (reference_bundle / "model.fp32.onnx").stat().st_size
    assert fp32 <= (reference_checkpoint / "pytorch_model.bin").stat().st_size  # tied matrix once
    assert (reference_bundle / "model.int8.onnx").stat().st_size < fp32


def test_fp32_fill_mask_top1_agrees_with_pytorch(reference_bundle, reference_checkpoint, sentences, many_sentences):
    import torch

    from flare_onnx_export.checkpoint import load_checkpoint
    from flare_onnx_export.sample import mask_sentences

    texts = mask_sentences(sentences + many_sentences[:900], "<mask>", seed=7)
    model = flare_onnx.load(reference_bundle, precision="fp32")
    got = [masks[0][0].token_id for masks in model.fill_mask(texts, top_k=1)]
    torch_model = load_checkpoint(reference_checkpoint, source="ref").model
    tok = model.tokenizer.tokenizer
    agree = 0
    order = sorted(range(len(texts)), key=lambda i: len(tok.encode(texts[i]).ids))  # little padding
    encoded = [tok.encode(texts[i]).ids for i in order]
    with torch.inference_mode():  # PyTorch in padded batches of 64 (one text at a time took ~45 s)
        for start in range(0, len(texts), 64):
            batch = encoded[start : start + 64]
            width = max(map(len, batch))
            ids = torch.tensor([row + [1] * (width - len(row)) for row in batch])  # 1: the pad id
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
            hidden = torch_model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            at = torch.tensor([row.index(4) for row in batch])  # 4: the mask id; the head on those rows only
            top1 = torch_model.lm_head(hidden[torch.arange(len(batch)), at]).argmax(-1)
            agree += sum(int(t) == got[i] for t, i in zip(top1, order[start : start + 64]))
    assert len(texts) >= 1000
    assert agree / len(texts) >= 0.995, agree / len(texts)


def test_verbs_run_on_the_full_size_bundle(reference_bundle, sentences):
    model = flare_onnx.load(reference_bundle)
    emb = model.embed(sentences[:64])
    assert emb.shape == (64, 384) and np.isfinite(emb).all()
    long = " ".join(sentences)  # thousands of tokens
    assert model.embed([long], window="sliding").shape == (1, 384)
    assert len(model.fill_mask(["Roma è la <mask> d'Italia."], top_k=3)[0][0]) == 3


def test_reference_checkpoint_is_the_same_bytes_every_time(tmp_path):
    """Two writes give identical files (the vocabulary once came out in hash order)."""
    import hashlib

    from flare_onnx_export import write_reference

    digests = []
    for name in ("a", "b"):
        out = write_reference(tmp_path / name)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1]
    vocab = (tmp_path / "a" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    learned = [t for t in vocab[5:] if not t.startswith("[unused")]
    assert learned == sorted(learned, key=lambda t: (t.startswith("##"), t))
    assert digests[0]["vocab.txt"] == VOCAB_SHA256  # pinned: a change here changes every reference bundle


GOLDEN_TEXT = "Roma è la capitale d'Italia."
GOLDEN_IDS = [0, 1257, 1579, 765, 267, 406, 5, 751, 8, 2]
#: last_hidden_state[0, 1, :6] and [0, -1, :6] of PyTorch FP32 on the reference checkpoint (seed 0)
GOLDEN = [[-1.28945, -0.88362, 0.71404, -0.00408, 0.87224, 0.82495], [-0.72211, -1.08309, 0.25416, 0.38401, -0.52124, -0.537]]


def test_golden_slice_pins_pytorch_and_onnx_together(reference_checkpoint, reference_bundle):
    """A change that moved PyTorch and the ONNX graph together (weights, vocabulary, position
    ids) would pass every agreement test; this stored slice catches it."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    ids = flare_onnx.load(reference_bundle, precision="fp32").tokenizer.tokenizer.encode(GOLDEN_TEXT).ids
    assert ids == GOLDEN_IDS
    model = AutoModel.from_pretrained(str(reference_checkpoint)).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    session = ort.InferenceSession(str(reference_bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
             "mask_positions": np.zeros(0, dtype=np.int64)}
    onnx_hidden = session.run(["last_hidden_state"], feeds)[0][0]
    for got in (hidden, onnx_hidden):
        np.testing.assert_allclose([got[1, :6], got[-1, :6]], GOLDEN, atol=1e-4)
