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
    with pytest.raises(InputError, match="backend must be one of 'auto', 'onnxruntime', 'openvino', not 'tensorrt'"):
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


@pytest.mark.parametrize("name", ["model.int8.xml", "model.int8.bin"])
def test_info_and_verify_hash_the_openvino_ir_too(ov_bundle, tmp_path, capsys, name):
    from flare_onnx.cli import main

    bundle = tmp_path / "b"
    shutil.copytree(ov_bundle, bundle)
    assert main(["info", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["openvino"]["int8"]["file"] == "model.int8.xml"
    data = bytearray((bundle / name).read_bytes())
    data[-2] ^= 0x01  # one byte
    (bundle / name).write_bytes(bytes(data))
    assert main(["info", str(bundle)]) == 1
    assert f"{name} does not match its sha256" in capsys.readouterr().err


def test_the_cli_reaches_the_backend(ov_bundle, capsys):
    from flare_onnx.cli import main

    assert main(["embed", str(ov_bundle), "--backend", "openvino", "Il gatto dorme."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isclose(np.linalg.norm(out[0]["embedding"]), 1.0, atol=1e-4)


def test_auto_runs_onnxruntime_and_openvino_only_when_asked_for():
    from flare_onnx.engine import BackendChoice, choose_backend

    bulk, interactive = choose_backend("auto", "bulk"), choose_backend("auto", "interactive")
    assert (bulk.backend, interactive.backend) == ("onnxruntime", "onnxruntime")
    assert "one batch per CPU at once" in bulk.reason and "one batch per CPU" not in interactive.reason
    asked = BackendChoice("openvino", "asked for")
    assert choose_backend("openvino", "bulk") == choose_backend("openvino", "interactive") == asked


def test_the_choice_is_visible_in_load_info_and_the_job(ov_bundle, tmp_path, capsys):
    """A bundle with an IR still runs bulk work on onnxruntime under auto, in streams; the
    reason is the same in load(), ``info`` and the job's log line; asking for OpenVINO gets it."""
    from flare_onnx.cli import main
    from flare_onnx.engine import choose_backend

    expected = choose_backend("auto", "bulk")
    model = flare_onnx.load(ov_bundle, workload="bulk", threads=2)
    assert (model.backend, model.backend_choice, model.streams) == ("onnxruntime", expected.reason, 2)
    assert flare_onnx.load(ov_bundle).backend == "onnxruntime"  # interactive by default
    assert main(["info", str(ov_bundle)]) == 0
    engine = json.loads(capsys.readouterr().out)["engine"]
    assert engine["bulk"] == {"backend": "onnxruntime", "why": expected.reason}
    assert engine["interactive"]["backend"] == "onnxruntime"
    texts = tmp_path / "in.txt"
    texts.write_text("Il gatto dorme.\nRoma è bella.\n", encoding="utf-8")
    assert main(["run", "embed", str(ov_bundle), "-i", str(texts), "-o", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    assert f"engine: onnxruntime ({expected.reason})" in capsys.readouterr().err
    assert main(["run", "embed", str(ov_bundle), "-i", str(texts), "-o", str(tmp_path / "ov.jsonl"), "--no-progress",
                 "--backend", "openvino"]) == 0
    assert "engine: openvino (asked for)" in capsys.readouterr().err


def test_the_faithful_recipe_finds_every_layers_ffn_output(tiny_checkpoint, ov_bundle):
    """The recipe the export escalates to (when NNCF's default misses the fidelity target)
    leaves exactly one MatMul per layer in floating point: the FFN output projection."""
    import openvino as ov

    from flare_onnx_export.openvino_ir import _FFN_OUT

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    fp32 = ov.Core().read_model(str(ov_bundle / "model.fp32.onnx"))
    names = [op.get_friendly_name() for op in fp32.get_ops() if op.get_type_name() == "MatMul" and _FFN_OUT.search(op.get_friendly_name())]
    assert len(names) == config["num_hidden_layers"], names
