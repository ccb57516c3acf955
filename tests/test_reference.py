"""The full-size Flare-IT-shaped reference checkpoint: its shape, its export, and PyTorch agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flare_onnx
from flare_onnx_export.reference import FLARE_IT_CONFIG

pytestmark = pytest.mark.slow


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
    with torch.inference_mode():
        for text, token in zip(texts, got):
            ids = tok.encode(text).ids
            t = torch.tensor([ids])
            logits = torch_model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0]
            agree += int(logits[ids.index(4)].argmax()) == token
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
