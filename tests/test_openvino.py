"""The OpenVINO backend: an NNCF INT8 IR made at export under the fidelity guard, loaded from
verified bytes, behind the same verbs, options and surfaces as onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import BundleError, InputError

from .conftest import _quiet

pytest.importorskip("openvino", reason='the OpenVINO backend needs pip install ".[openvino-export]"')
pytest.importorskip("nncf", reason='the OpenVINO export needs pip install ".[openvino-export]"')


@pytest.fixture(scope="module")
def ov_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flare_onnx_export import export_bundle

    return export_bundle(str(tiny_checkpoint), tmp_path_factory.mktemp("ov") / "tiny", openvino=True, log=_quiet)


def test_export_records_the_ir_and_its_fidelity(ov_bundle):
    manifest = json.loads((ov_bundle / "manifest.json").read_text())
    ir = manifest["openvino"]["int8"]
    assert (ir["file"], ir["weights"]) == ("model.int8.xml", "model.int8.bin")
    assert {"model.int8.xml", "model.int8.bin"} <= set(manifest["files"])
    figures = manifest["verification"]["openvino-int8"]
    assert figures["embedding_cosine_mean"] >= 0.995 and figures["embedding_cosine_min"] >= 0.98


def test_openvino_backend_agrees_with_fp32(ov_bundle, sentences):
    ov = flare_onnx.load(ov_bundle, backend="openvino", threads=2)
    fp32 = flare_onnx.load(ov_bundle, precision="fp32")
    assert ov.backend == "openvino" and ov.precision == "int8"
    cos = (ov.embed(sentences[:20]) * fp32.embed(sentences[:20])).sum(1)
    assert cos.min() > 0.99
    texts = ["Roma è la <mask> d'Italia.", "Il <mask> dorme sul <mask>."]
    got = ov.predict("fill-mask", texts, {"top_k": 5})
    assert [len(m) for m in got] == [1, 2] and all(len(c) == 5 for masks in got for c in masks)
    top1 = [m[0].token_id for masks in fp32.fill_mask(texts, top_k=1) for m in masks]
    top5 = [[c.token_id for c in m] for masks in got for m in masks]
    assert sum(t in five for t, five in zip(top1, top5)) >= 2  # of the 3 masks


def test_a_bundle_without_ir_says_how_to_get_one(tiny_bundle):
    with pytest.raises(InputError, match="no OpenVINO IR; export it with `flare-onnx export ... --openvino`"):
        flare_onnx.load(tiny_bundle, backend="openvino")
    with pytest.raises(InputError, match="backend must be one of 'onnxruntime', 'openvino', not 'tensorrt'"):
        flare_onnx.load(tiny_bundle, backend="tensorrt")


def test_an_altered_ir_is_refused(ov_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(ov_bundle, bundle)
    data = bytearray((bundle / "model.int8.bin").read_bytes())
    data[100] ^= 0xFF
    (bundle / "model.int8.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.int8.bin does not match its sha256"):
        flare_onnx.load(bundle, backend="openvino")
    flare_onnx.load(bundle)  # the onnxruntime graphs are untouched and still load


def test_the_cli_reaches_the_backend(ov_bundle, capsys):
    from flare_onnx.cli import main

    assert main(["embed", str(ov_bundle), "--backend", "openvino", "Il gatto dorme."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isclose(np.linalg.norm(out[0]["embedding"]), 1.0, atol=1e-4)
