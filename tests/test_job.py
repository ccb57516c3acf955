"""flare-onnx run: streaming batch jobs, bad records, resume after kill -9, workers, memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flare_onnx import InputError
from flare_onnx.job import EXIT_RECORD_ERRORS, JobConfig, parse_record, run_job


def _write_jsonl(path: Path, n: int, *, bad: bool = False) -> None:
    words = ["Roma", "città", "perché", "l'uomo", "d'Italia", "il", "gatto", "dorme", "piove", "Milano"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 12))
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
        if bad:
            f.write("{not json\n")
            f.write(json.dumps({"id": "no text"}) + "\n")
            f.write(json.dumps({"text": 42}) + "\n")
            f.write(json.dumps({"text": "   "}) + "\n")
    if bad:
        with open(path, "ab") as f:
            f.write(b'{"text": "caff\xe8 latin-1"}\n')


def test_jsonl_job_keeps_order_fields_and_reports_bad_records(tiny_bundle, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, 300, bad=True)
    code = run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), chunk=64, progress=False))
    assert code == EXIT_RECORD_ERRORS
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == list(range(300)) and [r["line"] for r in rows] == list(range(1, 301))
    assert len(rows[0]["embedding"]) == 32
    errors = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [301, 302, 303, 304, 305]
    reasons = " | ".join(e["error"] for e in errors)
    for reason in ("invalid JSON", "missing field 'text'", "is int, not a string", "empty text", "invalid UTF-8"):
        assert reason in reasons
    assert not (tmp_path / "out.jsonl.partial").exists() and not (tmp_path / "out.jsonl.state").exists()


def test_embeddings_to_npy(tiny_bundle, tmp_path):
    src, out, npy = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "emb.npy"
    _write_jsonl(src, 150)
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), npy=str(npy),
                             chunk=40, progress=False, model_options={"precision": "fp32"})) == 0
    matrix = np.load(npy)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert matrix.shape == (150, 32) and [r["row"] for r in rows] == list(range(150))
    import flare_onnx

    # FP32: identical whatever the batch (INT8 activation scales depend on the batch's range)
    direct = flare_onnx.load(tiny_bundle, precision="fp32").embed([rows[7]["text"]])[0]
    np.testing.assert_allclose(matrix[7], direct, atol=1e-5)


def test_plain_text_through_stdin_and_stdout(tiny_tagger):
    proc = subprocess.run(
        [sys.executable, "-m", "flare_onnx", "run", "tag", str(tiny_tagger), "-i", "-", "-o", "-", "--format", "text"],
        input="Mario vive a Roma.\n\nLuisa lavora a Milano.\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0  # the blank line separates paragraphs: skipped and counted, not an error
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 3] and rows[1]["text"] == "Luisa lavora a Milano."
    assert "3 input lines, 2 results -> -, 1 blank line skipped" in proc.stderr and "empty text" not in proc.stderr


def test_missing_task_fails_before_reading(tiny_bundle, tmp_path):
    from flare_onnx import TaskNotAvailableError

    with pytest.raises(TaskNotAvailableError):
        run_job(JobConfig(task="tag", bundle=str(tiny_bundle), input="/nonexistent", output=str(tmp_path / "o")))


def _cmd(bundle: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flare_onnx", "run", "embed", str(bundle), "-i", str(src), "-o", str(out),
            "--chunk", "50", "--no-progress", *extra]


def test_kill_9_and_resume_gives_every_record_exactly_once(tiny_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, 6000)
    clean = tmp_path / "clean.jsonl"
    assert subprocess.run(_cmd(tiny_bundle, src, clean), timeout=300).returncode == 0
    out = tmp_path / "out.jsonl"
    state = tmp_path / "out.jsonl.state"
    kills = 0
    for wait_lines in (600, 2500):  # kill twice, at different depths
        proc = subprocess.Popen(_cmd(tiny_bundle, src, out))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if json.loads(state.read_text())["line"] >= wait_lines:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.01)  # polling the state file: the event is a checkpoint written
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        assert not out.exists()  # the final file appears only when the job is done
    assert kills >= 1
    rerun = subprocess.run(_cmd(tiny_bundle, src, out), timeout=300, capture_output=True, text=True)
    assert rerun.returncode == 0 and f"flare-onnx: resuming {out} after input line" in rerun.stderr
    assert out.read_bytes() == clean.read_bytes()  # every record exactly once, in order
    assert not state.exists()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_two_workers_match_one(tiny_bundle, tmp_path, precision):
    """Two worker processes of one thread each, or one process running two batches at once:
    every line once, in order, the same vectors (INT8's to its batch noise: batches differ, and
    each batch has its own activation scale)."""
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, 400)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert subprocess.run(_cmd(tiny_bundle, src, one, "--precision", precision, "--threads", "2"), timeout=300).returncode == 0
    assert subprocess.run(_cmd(tiny_bundle, src, two, "--precision", precision, "--workers", "2"), timeout=300).returncode == 0
    a = [json.loads(line) for line in one.read_text().splitlines()]
    b = [json.loads(line) for line in two.read_text().splitlines()]
    assert [r["line"] for r in a] == [r["line"] for r in b] == list(range(1, 401))
    va, vb = np.array([r["embedding"] for r in a]), np.array([r["embedding"] for r in b])
    if precision == "fp32":
        np.testing.assert_allclose(va, vb, atol=1e-5)
    else:
        assert (np.sum(va * vb, axis=1) > 0.999).all()


PEAK = """
import sys
from flare_onnx.job import JobConfig, run_job
run_job(JobConfig(task="embed", bundle=sys.argv[1], input=sys.argv[2], output=sys.argv[3], chunk=256, progress=False))
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_file_size(tiny_bundle, tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _write_jsonl(small, 5_000)
    _write_jsonl(big, 40_000)  # 8x the small file: a growth with the file would show
    peaks = []
    for src in (small, big):
        proc = subprocess.run([sys.executable, "-c", PEAK, str(tiny_bundle), str(src), str(tmp_path / f"o-{src.stem}.jsonl")],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stdout.split()[-1]) / 1024)
    assert sum(1 for _ in open(tmp_path / "o-big.jsonl")) == 40_000
    assert peaks[1] - peaks[0] < 25, peaks  # MB: bounded by the chunk, not the file


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["jsonl", "text"]))
def test_fuzz_record_parser_never_raises(raw, fmt):
    text, carried, error = parse_record(raw, fmt=fmt, text_field="text")
    blank_text_line = fmt == "text" and not raw.decode("utf-8", "replace").strip()
    if blank_text_line:  # skipped: neither a text nor an error
        assert text is None and error is None
    else:
        assert (text is None) != (error is None)
    if text is not None:
        assert isinstance(text, str) and text.strip()


class _Crash(BaseException):
    """Stands for a kill: raised at an injected point, it skips every handler but finally."""


def _files(out: Path, npy: Path) -> dict[str, bytes | None]:
    paths = {"out": out, "errors": out.with_name(out.name + ".errors.jsonl"), "npy": npy}
    return {k: p.read_bytes() if p.exists() else None for k, p in paths.items()}


@pytest.mark.parametrize("point", ["os.replace", "os.fsync", "Path.unlink", "Checkpoint.save"])
def test_a_crash_at_any_step_then_a_rerun_gives_the_clean_output(tiny_bundle, tmp_path, monkeypatch, point):
    """Crash at the k-th call of each file operation, for every k the job makes, then rerun
    the same command: the result must be the clean run's bytes (no NULs, no lost rows)."""
    import flare_onnx.job.checkpoint as job

    src = tmp_path / "in.jsonl"
    _write_jsonl(src, 120, bad=True)

    def cfg(d: Path) -> JobConfig:
        return JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(d / "out.jsonl"),
                         npy=str(d / "emb.npy"), chunk=25, progress=False)

    (tmp_path / "clean").mkdir()
    assert run_job(cfg(tmp_path / "clean")) == EXIT_RECORD_ERRORS
    clean = _files(tmp_path / "clean" / "out.jsonl", tmp_path / "clean" / "emb.npy")
    owner, name = {"os.replace": (os, "replace"), "os.fsync": (os, "fsync"),
                   "Path.unlink": (Path, "unlink"), "Checkpoint.save": (job.Checkpoint, "save")}[point]
    real = getattr(owner, name)
    k = 0
    while True:
        k += 1
        d = tmp_path / f"{name}-{k}"
        d.mkdir()
        calls = 0

        def faulty(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == k:
                raise _Crash()
            return real(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(owner, name, faulty)
            try:
                run_job(cfg(d))
                crashed = False
            except _Crash:
                crashed = True
        assert run_job(cfg(d)) == EXIT_RECORD_ERRORS
        assert _files(d / "out.jsonl", d / "emb.npy") == clean, f"crash at call {k} of {point}"
        # the outputs, the errors, and what the finished output was made with (nothing partial)
        assert sorted(p.name for p in d.iterdir()) == ["emb.npy", "out.jsonl", "out.jsonl.done", "out.jsonl.errors.jsonl"]
        if not crashed:
            break
    assert k >= 3  # the fault really was injected at two steps or more


def test_resume_refuses_changed_options_or_input(tiny_bundle, tmp_path, monkeypatch):
    import flare_onnx.job.checkpoint as job

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, 100)
    base = dict(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), chunk=20, progress=False)
    real, calls = job.Checkpoint.save, 0

    def crash_third(self):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise _Crash()
        real(self)

    with monkeypatch.context() as m:
        m.setattr(job.Checkpoint, "save", crash_third)
        with pytest.raises(_Crash):
            run_job(JobConfig(**base))
    with pytest.raises(InputError, match="another task, bundle, options or input; run again with --restart"):
        run_job(JobConfig(**base, options={"normalize": False}))
    with pytest.raises(InputError, match="another task, bundle, options or input"):
        run_job(JobConfig(**base, npy=str(tmp_path / "e.npy")))
    data = src.read_bytes()
    src.write_bytes(data.replace(b"Roma", b"Rama", 1))  # the same size, another content
    with pytest.raises(InputError, match="changed since the checkpoint"):
        run_job(JobConfig(**base))
    assert run_job(JobConfig(**base, resume=False)) == 0
    assert len(out.read_text().splitlines()) == 100


def test_bad_paths_options_and_empty_input_leave_nothing_behind(tiny_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    _write_jsonl(src, 5)
    cases = [
        (dict(input=str(tmp_path / "missing.jsonl")), "does not exist"),
        (dict(output=str(tmp_path / "no" / "dir" / "o.jsonl")), "output folder"),
        (dict(options={"top_k": 3}), "embed has no option 'top_k'"),
        (dict(options={"pooling": "sum"}), "pooling must be one of 'mean', 'cls', 'max'"),
        (dict(model_options={"threads": 0}), "threads must be at least 1"),
        (dict(input_format="csv"), "input format must be one of"),
    ]
    for change, message in cases:
        base = dict(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(tmp_path / "o.jsonl"), progress=False)
        with pytest.raises(InputError, match=message):
            run_job(JobConfig(**{**base, **change}))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(empty), output=str(tmp_path / "o.jsonl"), progress=False)) == 0
    assert (tmp_path / "o.jsonl").read_bytes() == b"" and not (tmp_path / "o.jsonl.errors.jsonl").exists()


def test_bom_keeps_the_first_record(tiny_bundle, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "Prima riga."}).encode() + b"\n" + json.dumps({"text": "Seconda."}).encode() + b"\n")
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False)) == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["Prima riga.", "Seconda."]
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists()  # no errors, no errors file


def test_a_clean_rerun_leaves_no_stale_errors_file(tiny_bundle, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, 20, bad=True)
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False)) == EXIT_RECORD_ERRORS
    assert (tmp_path / "out.jsonl.errors.jsonl").exists()
    _write_jsonl(src, 20)  # fixed input
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False)) == 0
    assert not (tmp_path / "out.jsonl.errors.jsonl").exists()


@pytest.mark.slow
def test_a_killed_worker_is_one_line_and_the_job_resumes(tiny_bundle, tmp_path):
    """kill -9 one of --workers 2: a one-line error, nothing lost; the same command finishes it."""
    import psutil

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src, 20_000)
    proc = subprocess.Popen(_cmd(tiny_bundle, src, out, "--workers", "2"), stderr=subprocess.PIPE, text=True)
    state = tmp_path / "out.jsonl.state"
    deadline = time.time() + 120
    while not state.exists():  # the first chunk is written: the workers are up
        assert time.time() < deadline and proc.poll() is None, "the job never wrote a checkpoint"
        time.sleep(0.05)
    workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert workers, "no worker processes found"
    workers[0].kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "a worker process died" in err and "run the same command again to resume" in err and "Traceback" not in err
    rerun = subprocess.run(_cmd(tiny_bundle, src, out, "--workers", "2"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == list(range(20_000))


def test_rerunning_a_finished_job_says_so_and_does_nothing(tiny_bundle, tmp_path, capsys):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("Il gatto dorme.\nPiove.\n", encoding="utf-8")

    def cfg() -> JobConfig:
        return JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(out), progress=False)

    assert run_job(cfg()) == 0
    stamp = out.stat().st_mtime_ns
    capsys.readouterr()
    assert run_job(cfg()) == 0
    assert "already this job's finished output (2 input lines" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == stamp
    src.write_text("Il gatto dorme.\nPiove.\nNevica.\n", encoding="utf-8")  # the same file, other contents
    assert run_job(cfg()) == 0
    assert len(out.read_text().splitlines()) == 3
