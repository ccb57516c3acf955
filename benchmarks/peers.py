"""Peer graphs made from a flare-onnx bundle's FP32 graph, as their users make them:
onnxruntime ``quantize_dynamic`` (per-channel) and OpenVINO + NNCF static INT8 calibrated on
Italian text that the benchmark does not measure; and CTranslate2's int8 conversion of the
checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIBRATION = 300  # sentences, NNCF's default subset size


def ort_dynamic(bundle: Path, out: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not out.exists():
        quantize_dynamic(
            str(bundle / "model.fp32.onnx"),
            str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
        )
    return str(out)


def nncf_int8(bundle: Path, out: Path, texts: list[str]) -> str:
    """``nncf.quantize`` with the transformer model type, one sentence per calibration item."""
    if out.exists():
        return str(out)
    import nncf
    import openvino as ov

    from flare_onnx.engine.bundle import read_manifest
    from flare_onnx.engine.batching import pad_batch
    from flare_onnx.engine.tokenization import TextEncoder
    from flare_onnx_export.sample import mask_sentences

    manifest = read_manifest(bundle)
    encoder = TextEncoder(
        (bundle / "tokenizer.json").read_text(encoding="utf-8"), manifest.special, max_length=manifest.max_length
    )
    model = ov.Core().read_model(str(bundle / "model.fp32.onnx"))
    with_masks = any(p.get_any_name() == "mask_positions" for p in model.inputs)
    if with_masks:
        texts = mask_sentences(texts, manifest.special.mask_token or "<mask>")
    items = []
    for w in encoder.windows(encoder.encode(texts[:CALIBRATION]), sliding=False, stride=0):
        ids, attention = pad_batch([w.ids], manifest.special.pad_id)
        item = {"input_ids": ids, "attention_mask": attention}
        if with_masks:
            item["mask_positions"] = np.flatnonzero(ids.reshape(-1) == manifest.special.mask_id).astype(np.int64)
        items.append(item)
    quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    ov.save_model(quantized, str(out))
    return str(out)


def ct2_int8(checkpoint: Path, out: Path) -> str:
    """``ct2-transformers-converter --model CHECKPOINT --quantization int8``, from Python."""
    if not (out / "model.bin").exists():
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(checkpoint)).convert(str(out), quantization="int8", force=True)
    return str(out)
