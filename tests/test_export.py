"""Export: manifest contents, one copy of the tied matrix, safe loading, clear failures."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

import flare_onnx
from flare_onnx import ExportError
from flare_onnx_export import export_bundle
from flare_onnx_export.checkpoint import resolve_checkpoint


def _quiet(msg: str) -> None:
    pass


def test_manifest_records_files_io_and_verification(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["task"] == "fill-mask"
    assert manifest["tasks"] == ["fill-mask", "embed"]
    assert set(manifest["files"]) == {"model.fp32.onnx", "model.int8.onnx", "tokenizer.json", "config.json"}
    assert manifest["graphs"]["fp32"]["inputs"] == ["input_ids", "attention_mask", "mask_positions"]
    assert manifest["graphs"]["int8"]["outputs"] == ["last_hidden_state", "mask_logits"]
    assert manifest["opset"] == 17
    assert manifest["tokenizer_check"]["mismatches"] == 0
    fp32, int8 = manifest["verification"]["fp32"], manifest["verification"]["int8"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert 0 <= int8["top1_agreement"] <= 1 and int8["embedding_cosine_mean"] > 0.9
    quant = manifest["quantization"]
    assert quant["built_for"] in ("vnni", "avx2") and quant["fidelity_target"] == 0.995
    assert quant["split_first_nodes"] == 0 and quant["fp32_nodes"] == []  # per-row activations: nothing to split
    assert quant["method"].endswith("per-row activations") and quant["gelu_rows"] == 2  # one FFN out per layer
    static = quant["static"]  # Q/K/V and FFN in of both layers read a LayerNorm: scales fixed at export
    assert len(static["matmuls"]) == 2 * 4 and 0 < static["scales"]["min"] <= static["scales"]["max"]
    assert quant["smoothing"]["alpha"] == 0.8 and quant["smoothing"]["matmuls"] == static["matmuls"]
    assert manifest["model"]["special_tokens"]["mask"] == ["<mask>", 4]
    assert manifest["model"]["max_length"] == 128  # 130 positions - (pad_token_id + 1)
    assert {"torch", "onnxruntime", "tokenizers"} <= set(manifest["versions"])


def test_classification_bundles_carry_labels(tiny_tagger, tiny_classifier):
    from .conftest import NER_LABELS, SENTIMENT

    assert json.loads((tiny_tagger / "manifest.json").read_text())["model"]["labels"] == NER_LABELS
    assert json.loads((tiny_classifier / "manifest.json").read_text())["model"]["labels"] == SENTIMENT


def test_graph_inputs_have_no_token_type_ids(tiny_bundle):
    import onnx

    model = onnx.load(str(tiny_bundle / "model.fp32.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "mask_positions"]


def test_tied_embedding_is_stored_once(tiny_bundle, tiny_checkpoint):
    import onnx
    import torch

    vocab = sum(1 for _ in open(tiny_checkpoint / "vocab.txt", encoding="utf-8"))
    model = onnx.load(str(tiny_bundle / "model.fp32.onnx"))
    big = [t.name for t in model.graph.initializer if vocab in t.dims and len(t.dims) == 2]
    assert len(big) == 1
    params = sum(v.numel() for v in torch.load(tiny_checkpoint / "pytorch_model.bin", weights_only=True).values()
                 if v.dtype.is_floating_point)
    assert (tiny_bundle / "model.fp32.onnx").stat().st_size < params * 4 * 1.1


def test_int8_graph_is_stored_optimized_with_the_same_outputs(tiny_bundle, tmp_path, monkeypatch):
    """The stored INT8 graph is onnxruntime's optimized one, and its session starts at the
    ``basic`` level; a copy of the bundle without the mark (as bundles were before) starts at
    the full level and gives the same vectors and the same predictions."""
    import numpy as np
    import onnxruntime as ort

    from flare_onnx.engine import session as session_module

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["graphs"]["int8"]["optimized"]["level"] == "extended"
    assert "optimized" not in manifest["graphs"]["fp32"]
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bundle, plain)
    del manifest["graphs"]["int8"]["optimized"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    levels: list[object] = []
    real = ort.InferenceSession

    def recording(model, sess_options, providers):
        levels.append(sess_options.graph_optimization_level)
        return real(model, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(session_module.ort, "InferenceSession", recording)
    model, old = flare_onnx.load(tiny_bundle, threads=1), flare_onnx.load(plain, threads=1)
    monkeypatch.undo()
    assert levels == [ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    texts = ["La capitale d'Italia è Roma.", "Il gatto dorme sul divano da stamattina, tranquillo."]
    np.testing.assert_allclose(model.embed(texts), old.embed(texts), atol=1e-5)
    masked = ["La capitale d'Italia è <mask>."]
    assert [p.token for p in model.fill_mask(masked)[0][0]] == [p.token for p in old.fill_mask(masked)[0][0]]


def test_optimized_mark_must_name_its_level(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["int8"]["optimized"] = {"level": "all"}  # CPU-specific layouts: not portable
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(flare_onnx.BundleError, match="graphs.int8.optimized.level must be 'extended'"):
        flare_onnx.load(bundle)


def test_optimizer_keeps_the_plain_graph_when_outputs_differ(tiny_bundle, tmp_path, monkeypatch):
    import numpy as np

    from flare_onnx_export import optimize

    graph = tmp_path / "q.onnx"
    shutil.copy(tiny_bundle / "model.int8.onnx", graph)
    ids = np.array([[0, 5, 6, 7, 2]], dtype=np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "mask_positions": np.array([2], dtype=np.int64)}
    said: list[str] = []
    assert optimize.optimize_for_onnxruntime(graph, [batch], log=said.append)["level"] == "extended"
    before = graph.read_bytes()
    monkeypatch.setattr(optimize, "TOLERANCE", -1.0)  # any difference at all, even none, is too much
    assert optimize.optimize_for_onnxruntime(graph, [batch], log=said.append) is None
    assert graph.read_bytes() == before and "the plain graph is kept" in said[-1]


def test_unreachable_hub_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match=r"there is no directory 'flare-onnx-tests/absent', and it could not be fetched from the Hugging Face Hub.*flare-onnx reference DIR"):
        resolve_checkpoint("flare-onnx-tests/absent")


def test_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is not a checkpoint directory"):
        resolve_checkpoint(str(tmp_path / "file"))


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/flare-onnx-pwned",))


def test_malicious_pickle_is_not_executed(tiny_checkpoint, tmp_path):
    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "evil"))
    marker = Path("/tmp/flare-onnx-pwned")
    marker.unlink(missing_ok=True)
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"roberta.embeddings.word_embeddings.weight": _Payload()}, f)
    with pytest.raises(ExportError, match="could not be read as plain tensors.*never unpickles code"):
        export_bundle(str(ckpt), tmp_path / "out", log=_quiet)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_safetensors_preferred(tiny_checkpoint, tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "st"))
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    state = {k: v.clone().contiguous() for k, v in state.items() if not k.startswith("lm_head.decoder")}
    save_file(state, str(ckpt / "model.safetensors"))
    (ckpt / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # must not be read
    out = export_bundle(str(ckpt), tmp_path / "b", precisions=("fp32",), log=_quiet)
    assert flare_onnx.load(out).precision == "fp32"


def test_existing_output_is_not_overwritten_by_default(tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty; pass overwrite=True"):
        export_bundle(str(tiny_checkpoint), out, log=_quiet)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "option, message",
    [
        ({"weight_rounding": "stochastic"}, "weight_rounding must be one of nearest, gptq, not 'stochastic'"),
        ({"target_cpu": "avx9"}, "target_cpu must be one of auto, vnni, avx2, arm64, not 'avx9'"),
        ({"activations": "per-channel"}, "activations must be one of per-tensor, per-row, not 'per-channel'"),
    ],
)
def test_bad_int8_options_are_refused_before_any_work(tiny_checkpoint, tmp_path, option, message):
    with pytest.raises(ExportError, match=message):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", log=_quiet, **option)
    assert not any(tmp_path.iterdir())  # nothing loaded, traced or written


def test_failed_export_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    import flare_onnx_export.exporter as exporter

    def broken(*args, **kwargs):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(exporter, "quantize_guarded", broken)
    with pytest.raises(RuntimeError, match="quantizer exploded"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_base_checkpoint_cannot_pose_as_a_tagger(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="lacks weights the token-classification model needs"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", task="token-classification", log=_quiet)


def test_export_extra_missing_gives_install_hint():
    from flare_onnx_export._deps import require

    with pytest.raises(ImportError, match=r'pip install "\.\[export\]" from a clone of flare-onnx'):
        require("a_module_that_is_not_installed")


def test_openvino_export_without_nncf_fails_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf now raises ImportError
    with pytest.raises(ExportError, match=r'--openvino needs OpenVINO and NNCF at export time: pip install "\.\[openvino-export\]"'):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", openvino=True)
    assert not any(tmp_path.iterdir())  # nothing was started, nothing left behind


def test_a_tokenizer_load_would_refuse_fails_the_export_saying_why():
    """A SentencePiece character map written as one Replace rule per character: load() refuses
    more than 32 stages, so the export must fail too, not write a bundle no one can load."""
    import tokenizers as tk

    from flare_onnx_export.exporter import _check_runtime_takes

    tok = tk.Tokenizer(tk.models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.Replace(chr(0xC0 + i), "a") for i in range(3000)])
    with pytest.raises(ExportError, match="would be refused when the bundle is loaded: .*3000 normalizer"):
        _check_runtime_takes(tok)
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.NFKC(), tk.normalizers.Lowercase()])
    _check_runtime_takes(tok)  # a real tokenizer's stages pass


def test_four_bit_embeddings_on_a_fill_mask_graph_are_refused_not_stored_as_eight(tiny_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="--embedding-bits 4 cannot store this word table in 4-bit blocks: the MLM"):
        export_bundle(str(tiny_checkpoint), tmp_path / "b", embedding_bits="4", precisions=("int8",), log=lambda m: None)
    assert not (tmp_path / "b").exists()
