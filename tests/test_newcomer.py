"""What a newcomer meets first: clear hints, short errors with the nearest command, a job that
skips blank lines and says what it did, aliases everywhere, defaults for a shared laptop."""

from __future__ import annotations

import inspect
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import BundleError, ExportError, InputError
from flare_onnx.cli import main, parse_args
from flare_onnx.engine import LOAD_OPTIONS
from flare_onnx.job import JobConfig, run_job


def test_spin_is_off_by_default_everywhere():
    assert {o.name: o.default for o in LOAD_OPTIONS}["spin"] is False
    assert inspect.signature(flare_onnx.load).parameters["spin"].default is False
    assert inspect.signature(flare_onnx.pipeline).parameters["spin"].default is False


def test_spinning_workers_stop_when_a_call_returns(tiny_bundle):
    """spin=True spins only while a call runs: an idle service takes no CPU between requests."""
    for spin in (False, True):
        opts = flare_onnx.load(tiny_bundle, precision="fp32", threads=2, spin=spin).session.inner.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"


def test_embed_takes_one_string_and_gives_one_vector(tiny_bundle):
    model = flare_onnx.load(tiny_bundle, precision="fp32")
    one = model.embed("Il gatto dorme.")
    assert one.shape == (32,)
    np.testing.assert_allclose(one, model.embed(["Il gatto dorme."])[0], atol=1e-6)


def _hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture
def offline():
    """For tests of what a user without the Hub sees (this workplace has no Hub)."""
    if _hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable here: this test checks the offline message")


def test_hints_fit_what_was_given(tmp_path, monkeypatch):
    text_file = tmp_path / "texts.txt"
    text_file.write_text("ciao\n")
    with pytest.raises(BundleError, match="is a file, not a bundle directory"):
        flare_onnx.load(text_file)
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "flare_onnx_export", None)  # the runtime-only install
    with pytest.raises(BundleError, match=r"a Hugging Face model id, not a bundle: install the exporter .* or run `flare-onnx export osiria/flare-it -o DIR`"):
        flare_onnx.load("osiria/flare-it")


def test_offline_a_hub_id_says_the_hub_could_not_be_reached(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ExportError, match="could not be fetched from the Hugging Face Hub"):
        flare_onnx.load("osiria/flare-it")


@pytest.mark.network
def test_a_hub_id_is_exported_once_into_the_cache(tmp_path, monkeypatch):
    """With the Hub (--run-network): load() of a model id exports it once and serves it."""
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(tmp_path / "cache"))
    model = flare_onnx.load("sentence-transformers/all-MiniLM-L6-v2", precision="int8")
    assert model.path.parent == tmp_path / "cache" and model.embed("Il gatto dorme.").shape == (384,)


def test_a_checkpoint_directory_is_exported_once_into_the_cache(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLARE_ONNX_CACHE", str(tmp_path / "cache"))
    model = flare_onnx.load(tiny_checkpoint, precision="fp32")
    assert model.path.parent == tmp_path / "cache" and "exporting" in capsys.readouterr().err
    manifest = model.path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = flare_onnx.load(tiny_checkpoint, precision="fp32")
    assert again.path == model.path and manifest.stat().st_mtime_ns == stamp and "exporting" not in capsys.readouterr().err
    np.testing.assert_allclose(again.embed(["ciao"]), model.embed(["ciao"]), atol=1e-6)


def test_prompts_stored_with_the_model_and_a_similarity_helper(tiny_checkpoint, tmp_path, capsys):
    from flare_onnx_export import export_bundle

    bundle = export_bundle(str(tiny_checkpoint), tmp_path / "b", task="feature-extraction", precisions=("fp32",),
                           prompts={"query": "query: ", "passage": "passage: "}, log=lambda m: None)
    model = flare_onnx.load(bundle)
    assert model.prompts == {"query": "query: ", "passage": "passage: "}
    np.testing.assert_allclose(model.embed(["Il gatto"], prompt="query"), model.embed(["query: Il gatto"]), atol=1e-6)
    with pytest.raises(InputError, match="no prompt 'question'; its prompts: 'query', 'passage'"):
        model.embed(["x"], prompt="question")
    assert main(["embed", str(bundle), "--prompt", "passage", "Il gatto"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]["embedding"]
    np.testing.assert_allclose(cli, model.embed("passage: Il gatto"), atol=1e-5)
    sims = flare_onnx.similarity(model.embed(["a", "b"]), model.embed("a"))
    assert sims.shape == (2, 1) and abs(sims[0, 0] - 1) < 1e-5
    with pytest.raises(InputError, match="vectors of 32 and 3 dimensions"):
        flare_onnx.similarity(model.embed("a"), np.ones(3))


def test_a_typo_gets_one_line_and_the_nearest_command(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["embd", "B", "ciao"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "did you mean 'embed'?" in err and len(err.splitlines()) <= 3
    with pytest.raises(SystemExit):
        parse_args(["embed", "B", "--poolng", "cls", "ciao"])
    assert "did you mean '--pooling'?" in capsys.readouterr().err


def test_null_and_aliases_on_the_command_line():
    assert parse_args(["embed", "B", "--max-text-tokens", "null", "x"]).max_text_tokens is None
    assert parse_args(["export", "M", "-o", "D", "--task", "ner"]).task == "token-classification"
    assert parse_args(["export", "M", "-o", "D", "--task", "embed"]).task == "feature-extraction"
    assert parse_args(["run", "classify", "B", "-i", "a", "-o", "b", "--top-k", "all"]).top_k is None


def test_the_job_skips_blank_lines_and_says_what_it_did(tiny_bundle, tmp_path, capsys):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("Il gatto dorme.\n\n   \nPiove a Milano.\n", encoding="utf-8")
    cfg = JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False)
    assert run_job(cfg) == 0
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 4]
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists()
    err = capsys.readouterr().err
    assert f"done: 4 input lines, 2 results -> {out}, 2 blank lines skipped" in err


def test_ctrl_c_says_a_rerun_resumes(tiny_bundle, tmp_path, monkeypatch, capsys):
    import flare_onnx.job as job

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "run_job", interrupted)
    src = tmp_path / "in.txt"
    src.write_text("ciao\n")
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(tmp_path / "o.jsonl")]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err


def test_a_resume_refuses_another_backend(tiny_bundle, tmp_path, monkeypatch):
    import flare_onnx.job.run as job

    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"frase numero {i}\n" for i in range(50)))
    real, calls = job.write_chunk, []

    def crash_after_first(*args, **kwargs):
        if calls:
            raise RuntimeError("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "write_chunk", crash_after_first)
    cfg = JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), chunk=10, progress=False)
    with pytest.raises(RuntimeError):
        run_job(cfg)
    assert (tmp_path / "out.jsonl.state").exists()
    monkeypatch.setattr(job, "write_chunk", real)
    other = JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False,
                      model_options={"backend": "openvino"})
    with pytest.raises(InputError, match="another task, bundle, options or input"):
        run_job(other)


def test_serve_checks_its_port_before_announcing(tiny_bundle, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "serving" not in err


def test_aliases_and_unknown_routes_over_http(tiny_bundle):
    from starlette.testclient import TestClient

    from flare_onnx.serve import create_app

    with TestClient(create_app(flare_onnx.load(tiny_bundle, precision="fp32"))) as client:
        direct = client.post("/v1/embed", json={"texts": ["ciao"]}).json()
        alias = client.post("/v1/feature-extraction", json={"texts": ["ciao"]})
        assert alias.status_code == 200 and alias.json()["results"] == direct["results"]
        missing = client.get("/v1/nothing")
        assert missing.status_code == 404 and "openapi.json" in missing.json()["error"]
        assert client.get("/v1/embed").status_code == 405


def test_hub_errors_are_cut_at_a_word():
    from flare_onnx_export.checkpoint import _first_sentence

    long = "We could not connect to the Hub and the files were not found in the cached path on the local disk. " * 4
    cut = _first_sentence(long, limit=120)
    assert cut.endswith(" …") and len(cut) <= 122 and cut[:-2].split()[-1] in long.split()
    assert _first_sentence("short one\nsecond line") == "short one"


def test_readme_points_at_the_bundle_the_demo_writes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert 'flare_onnx.load("artifacts/flare-it-reference-onnx")' in readme
    assert "export.py" not in readme and len(readme.splitlines()) <= 250


def test_a_finished_output_is_not_replaced_by_another_job_without_restart(tiny_bundle, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("Il gatto dorme.\nPiove a Milano.\n", encoding="utf-8")

    def job(**options):
        return JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False, **options)

    assert run_job(job()) == 0
    first = out.read_bytes()
    assert run_job(job()) == 0 and out.read_bytes() == first  # the same job again: allowed, same bytes
    with pytest.raises(InputError, match="finished output of a run with another task, options"):
        run_job(job(options={"normalize": False}))
    assert out.read_bytes() == first  # nothing lost
    assert run_job(job(options={"normalize": False}, resume=False)) == 0  # --restart
    assert out.read_bytes() != first
