"""Ray Data: the map_batches classes, a 20,000-record job against the local batch job, and a
worker node killed mid-job on a multi-node cluster of this one machine (loopback only)."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import flare_onnx.ray_data as frd  # noqa: E402
from flare_onnx.job import JobConfig, run_job  # noqa: E402

pytestmark = pytest.mark.slow


def _records(n: int) -> list[dict]:
    words = ["Roma", "città", "perché", "l'uomo", "d'Italia", "il", "gatto", "dorme", "piove", "Milano", "è", "bella"]
    return [{"id": i, "text": " ".join(words[(i * 5 + k) % len(words)] for k in range(2 + i % 9)), "lang": "it"} for i in range(n)]


@pytest.mark.parametrize("fmt", ["numpy", "pandas", "pyarrow"])
def test_predictor_keeps_columns_in_every_batch_format(tiny_bundle, tiny_tagger, fmt):
    import pandas as pd
    import pyarrow as pa

    rows = _records(5)
    frame = pd.DataFrame(rows)
    batch = {"numpy": {k: np.array(frame[k].tolist(), dtype=object if k != "id" else None) for k in frame},
             "pandas": frame, "pyarrow": pa.Table.from_pandas(frame)}[fmt]
    out = frd.Embed(str(tiny_bundle), model_options={"precision": "fp32"})(batch)
    cols = list(out.keys()) if isinstance(out, dict) else list(out.column_names if hasattr(out, "column_names") else out.columns)
    assert cols == ["id", "text", "lang", "embedding"]
    emb = np.array(out["embedding"].to_pylist() if hasattr(out["embedding"], "to_pylist") else list(out["embedding"]), dtype=np.float32)
    assert emb.shape == (5, 32)
    tagged = frd.Tag(str(tiny_tagger))(batch)
    first = tagged["tags"][0] if not hasattr(tagged["tags"], "to_pylist") else tagged["tags"].to_pylist()[0]
    assert json.loads(first)["words"][0]["word"] == rows[0]["text"].split()[0]


@pytest.fixture(scope="module")
def _ray_runtime():
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_ray_runtime):
    """One local Ray runtime for the module's jobs (starting one costs seconds of both CPUs);
    run_ray_job works in it and leaves it up."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def test_5000_records_match_the_local_batch_job(local_ray, tiny_bundle, tmp_path):
    rows = _records(5_000)  # ten batches of 512 over two actors
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    local = tmp_path / "local.jsonl"
    assert run_job(JobConfig(task="embed", bundle=str(tiny_bundle), input=str(src), output=str(local),
                             model_options={"precision": "fp32"}, progress=False, chunk=512)) == 0
    expected = {r["id"]: r["embedding"] for r in map(json.loads, local.read_text().splitlines())}
    ds = ray.data.read_json(str(src), num_cpus=0).map_batches(
        frd.Embed, fn_constructor_kwargs={"bundle": frd.share_bundle(tiny_bundle), "model_options": {"precision": "fp32"}, "threads": 1},
        concurrency=2, num_cpus=1, batch_size=512,
    )
    got = ds.to_pandas()
    assert len(got) == 5_000 and sorted(got["id"]) == list(range(5_000))
    assert set(got["lang"]) == {"it"}
    for i, emb in zip(got["id"], got["embedding"]):
        np.testing.assert_allclose(emb, expected[i], atol=1e-5)


def test_cli_engine_ray(local_ray, tiny_bundle, tmp_path):
    from flare_onnx.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(300)))
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(tmp_path / "emb"), "--engine", "ray", "--actors", "2"]) == 0
    assert ray.is_initialized()  # the caller's Ray session is left up
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "emb")
    assert table.num_rows == 300 and set(table.column_names) >= {"id", "text", "embedding"}


def test_worker_node_killed_mid_job(reference_bundle, tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()  # a cluster of its own

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        rows = _records(2000)  # the full-size model: long enough a job to kill a node under it
        ds = ray.data.from_items(rows, override_num_blocks=40).map_batches(
            frd.Embed, fn_constructor_kwargs={"bundle": frd.share_bundle(reference_bundle), "threads": 1},
            concurrency=2, num_cpus=1, batch_size=50,
        )
        cluster.add_node(num_cpus=1)  # a spare node for the restarted actor
        ids: list[int] = []
        killed_after = None
        for batch in ds.iter_batches(batch_size=50, batch_format="pandas"):
            ids.extend(batch["id"].tolist())
            if killed_after is None:  # the job is running: its first results are here
                cluster.remove_node(workers[1])
                killed_after = len(ids)
        assert killed_after is not None and killed_after < 2000  # the node died mid-job
        assert sorted(ids) == list(range(2000))  # every record exactly once
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_missing_text_is_an_input_error_not_the_string_none(tiny_bundle):
    from flare_onnx import InputError

    with pytest.raises(InputError, match="text 1 is NoneType, not str"):
        frd.Embed(str(tiny_bundle))({"text": np.array(["ciao", None], dtype=object)})


def test_bad_records_get_the_local_jobs_outcome(local_ray, tiny_bundle, tmp_path):
    """40 good records, an empty text, a number for a text and a line that is not JSON: both
    engines write the 40, set the bad ones aside with their reasons, and exit 3 (the red
    team's first row: Ray's own JSON reader failed the whole job on {"text": 42})."""
    from flare_onnx.cli import main

    lines = [json.dumps(r) for r in _records(40)] + [json.dumps({"id": 9001, "text": ""}),
                                                      json.dumps({"id": 9002, "text": 42}), "{not json"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(line + "\n" for line in lines))
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(local)]) == 3
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(remote), "--engine", "ray", "--actors", "1"]) == 3
    local_ids = [json.loads(line)["id"] for line in local.read_text().splitlines()]
    ray_rows = [json.loads(line) for f in sorted(remote.iterdir()) for line in f.read_text().splitlines()]
    assert sorted(r["id"] for r in ray_rows) == local_ids == list(range(40))
    assert all(len(r["embedding"]) == 32 and "_flare_onnx_error" not in r for r in ray_rows)
    local_errors = [json.loads(line) for line in (tmp_path / "local.jsonl.errors.jsonl").read_text().splitlines()]
    ray_errors = [json.loads(line)["error"] for f in sorted((tmp_path / "ray.jsonl.errors").iterdir())
                  for line in f.read_text().splitlines()]
    assert [e["line"] for e in local_errors] == [41, 42, 43] and len(ray_errors) == 3
    for reason in ("empty", "is int, not a string", "invalid JSON"):
        assert any(reason in e["error"] for e in local_errors) and any(reason in e for e in ray_errors), reason
    raw = "".join(f.read_text() for f in sorted(remote.iterdir()))
    assert '"id": 0,' in raw.replace('"id":0,', '"id": 0,') and '.0,' not in raw.split('"embedding"')[0]  # ids stay integers

    # run again: refused before Ray starts, not added to (the red team saw 40 -> 80 results);
    # --restart clears the output and its errors folder first
    again = ["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(remote), "--engine", "ray", "--actors", "1"]
    assert main(again) == 2 and sum(len(f.read_text().splitlines()) for f in remote.iterdir()) == 40
    frd._check_paths(str(src), str(remote), replace=True)
    assert not remote.exists() and not (tmp_path / "ray.jsonl.errors").exists()


def test_an_id_beyond_64_bits_is_a_refused_record_not_a_traceback(tiny_bundle, tmp_path):
    from flare_onnx.cli import main

    ray.shutdown()  # no Ray session: the job starts its own and shuts it down

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1 << 70, "text": "ciao"}) + "\n" + json.dumps({"id": 1 << 60, "text": None}) + "\n"
                   + json.dumps({"id": 3, "text": "buongiorno"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", "embed", str(tiny_bundle), "-i", str(src), "-o", str(out), "--engine", "ray", "--actors", "1"]) == 3
    assert not ray.is_initialized()
    rows = [json.loads(line) for f in sorted(out.iterdir()) for line in f.read_text().splitlines()]
    errors = [json.loads(line)["error"] for f in sorted((tmp_path / "out.jsonl.errors").iterdir())
              for line in f.read_text().splitlines()]
    assert [r["id"] for r in rows] == [3] and len(errors) == 2
    assert any("beyond 64 bits" in e for e in errors) and any("NoneType" in e or "not a string" in e for e in errors)
