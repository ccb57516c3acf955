"""LangChain and Chroma, against the real libraries: the same vectors and the same rankings as
flare_onnx itself, the bundle's prompts for queries and documents, and a Chroma collection that
reopens from disk in another process with its embedding function."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flare_onnx
from flare_onnx import InputError

from .conftest import _once, _quiet

pytest.importorskip("langchain_core")
pytest.importorskip("chromadb")

PROMPTS = {"query": "query: ", "passage": "passage: "}
QUERIES = [
    "Dove dorme il gatto?",
    "Che tempo fa a Milano?",
    "Chi ha vinto la partita di calcio?",
    "Quanto costa il treno per Roma?",
    "Una ricetta per la pasta al pomodoro.",
    "Il governo ha approvato la legge.",
    "Le montagne sono coperte di neve.",
    "Il museo apre alle nove.",
]


@pytest.fixture(scope="module")
def prompted_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny feature-extraction bundle that stores E5's prompts."""
    from flare_onnx_export import export_bundle

    return _once(
        tmp_path_factory,
        "feat-prompts",
        lambda d: export_bundle(
            str(tiny_checkpoint), d / "feat-prompts", task="feature-extraction", prompts=PROMPTS, log=_quiet
        ),
    )


def _corpus(many_sentences: list[str], n: int) -> list[str]:
    return list(dict.fromkeys(many_sentences))[:n]


def _ranking(
    model: flare_onnx.FlareModel,
    queries: list[str],
    docs: list[str],
    k: int,
    batch: int = 0,
    queries_together: bool = False,
    **prompts: str,
) -> list[list[int]]:
    """The project's own ranking: flare_onnx.similarity of each query with every document, the
    texts embedded in the batches the store embeds them in (an INT8 vector moves slightly with
    its batch-mates: issue #36): LangChain embeds a query alone, Chroma a query_texts list at once."""
    if queries_together:
        q = list(model.embed(queries, prompt=prompts.get("query", "")))
    else:
        q = [model.embed(text, prompt=prompts.get("query", "")) for text in queries]
    batch = batch or len(docs)  # the documents in the batches the store embedded them in
    d = np.concatenate([model.embed(docs[i : i + batch], prompt=prompts.get("document", ""))
                        for i in range(0, len(docs), batch)])
    return [[int(i) for i in np.argsort(-np.ravel(flare_onnx.similarity(v, d)), kind="stable")[:k]] for v in q]


# -- LangChain ------------------------------------------------------------------------------


def test_langchain_uses_the_bundles_prompts_sync_and_async(prompted_bundle, sentences):
    from flare_onnx.integrations.langchain import FlareEmbeddings

    emb = FlareEmbeddings(prompted_bundle)
    model = emb.model
    docs = sentences[:5]
    got = emb.embed_documents(docs)
    assert isinstance(got, list) and isinstance(got[0], list) and isinstance(got[0][0], float)
    np.testing.assert_allclose(got, model.embed(docs, prompt="passage"), atol=1e-6)
    np.testing.assert_allclose(emb.embed_query(docs[0]), model.embed(docs[0], prompt="query"), atol=1e-6)
    assert not np.allclose(emb.embed_query(docs[0]), got[0], atol=1e-3)  # the prompts are really used
    np.testing.assert_allclose(asyncio.run(emb.aembed_documents(docs)), got, atol=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aembed_query(docs[0])), emb.embed_query(docs[0]), atol=1e-6)
    assert emb.embed_documents([]) == []
    plain = FlareEmbeddings(model, query_prompt="", document_prompt="")
    np.testing.assert_allclose(plain.embed_query(docs[0]), plain.embed_documents(docs[:1])[0], atol=1e-6)


def test_langchain_refuses_what_it_cannot_do(prompted_bundle, tiny_bundle, tiny_tagger):
    from flare_onnx.integrations.langchain import FlareEmbeddings

    with pytest.raises(InputError, match="no prompt 'domanda'; its prompts: 'query', 'passage'"):
        FlareEmbeddings(prompted_bundle, query_prompt="domanda")
    with pytest.raises(InputError, match="cannot embed"):
        FlareEmbeddings(tiny_tagger)
    with pytest.raises(InputError, match="need a path"):
        FlareEmbeddings(flare_onnx.load(tiny_bundle), precision="fp32")
    emb = FlareEmbeddings(tiny_bundle)  # fill-mask bundles embed too; no prompts stored: none used
    assert (emb.embedder.query_prompt, emb.embedder.document_prompt) == ("", "")
    with pytest.raises(flare_onnx.TextError, match="text 1 is empty"):
        emb.embed_documents(["Ciao.", " "])


def test_langchain_vector_store_ranks_as_flare_onnx_does(minilm_bundle, many_sentences):
    """langchain-core's InMemoryVectorStore over real all-MiniLM-L6-v2 vectors: each query's
    top hits are the project's own similarity ranking."""
    from langchain_core.vectorstores import InMemoryVectorStore

    from flare_onnx.integrations.langchain import FlareEmbeddings

    docs = _corpus(many_sentences, 300)
    emb = FlareEmbeddings(minilm_bundle)
    store = InMemoryVectorStore(emb)
    store.add_texts(docs, ids=[str(i) for i in range(len(docs))])
    expected = _ranking(emb.model, QUERIES, docs, 3)
    got = [[int(d.id) for d in store.similarity_search(q, k=3)] for q in QUERIES]
    assert got == expected


def test_langchain_openai_embeddings_against_the_service(tiny_bundle, sentences, monkeypatch):
    """LangChain's OpenAIEmbeddings pointed at the service: by default it sends tiktoken ids and
    gets a 400 that says what to set; with check_embedding_ctx_length=False it gets the vectors.
    tiktoken's tables are downloaded on first use (unreachable here): a byte-level encoding
    stands in for cl100k_base, so LangChain still sends token ids, as it does online."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("langchain_openai")
    import tiktoken
    from langchain_openai import OpenAIEmbeddings
    from starlette.testclient import TestClient

    from flare_onnx.serve import ServeConfig, create_app

    byte_level = tiktoken.Encoding(
        "bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={}
    )
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: byte_level)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    model = flare_onnx.load(tiny_bundle)
    with TestClient(create_app(model, ServeConfig()), base_url="http://127.0.0.1") as http:
        common = dict(model="flare-it", base_url="http://127.0.0.1/v1", api_key="x", http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
            OpenAIEmbeddings(**common).embed_documents(sentences[:2])
        texts = OpenAIEmbeddings(**common, check_embedding_ctx_length=False)
        np.testing.assert_allclose(texts.embed_documents(sentences[:3]), model.embed(sentences[:3]), atol=1e-5)
        np.testing.assert_allclose(texts.embed_query(sentences[0]), model.embed(sentences[0]), atol=1e-5)


# -- Chroma ---------------------------------------------------------------------------------

REOPEN = r"""
import json, sys
import chromadb
import flare_onnx.integrations.chroma  # registers the embedding function by name
client = chromadb.PersistentClient(sys.argv[1])
docs = client.get_collection("docs")  # no embedding function given: Chroma builds it from the stored config
queries = json.loads(sys.argv[2])
out = docs.query(query_texts=queries, n_results=5, include=[])
ef = docs.configuration["embedding_function"]
print(json.dumps({"count": docs.count(), "ids": out["ids"], "ef": ef.get_config()}))
"""


def test_chroma_collection_reopens_in_a_new_process_and_ranks_as_flare_onnx(
    prompted_bundle, many_sentences, tmp_path
):
    """A PersistentClient collection of 1,000 Italian texts: reopened from disk in a new process
    (the embedding function rebuilt from its stored config), its queries return the ids of the
    project's own ranking, queries embedded with the query prompt."""
    import chromadb

    from flare_onnx.integrations.chroma import FlareEmbeddingFunction

    docs = _corpus(many_sentences, 1000)
    assert len(docs) == 1000
    ef = FlareEmbeddingFunction(prompted_bundle)
    assert FlareEmbeddingFunction.build_from_config(ef.get_config()).get_config() == ef.get_config()
    client = chromadb.PersistentClient(str(tmp_path / "index"))
    col = client.create_collection(
        "docs", embedding_function=ef, configuration={"hnsw": {"ef_construction": 1000, "ef_search": 1000}}
    )
    for start in range(0, len(docs), 250):
        col.add(ids=[str(i) for i in range(start, start + 250)], documents=docs[start : start + 250])
    del col, client
    proc = subprocess.run(
        [sys.executable, "-c", REOPEN, str(tmp_path / "index"), json.dumps(QUERIES)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["count"] == 1000 and got["ef"] == ef.get_config()
    assert got["ef"]["query_prompt"] == "query" and got["ef"]["document_prompt"] == "passage"
    expected = _ranking(ef.embedder.model, QUERIES, docs, 5, 250, True, query="query", document="passage")
    assert [[int(i) for i in row] for row in got["ids"]] == [[int(i) for i in row] for row in expected]


def test_chroma_refuses_what_it_cannot_store_or_change(prompted_bundle, tiny_tagger):
    from flare_onnx.integrations.chroma import FlareEmbeddingFunction

    ef = FlareEmbeddingFunction(prompted_bundle, precision="fp32")
    assert ef.get_config()["load_options"] == {"precision": "fp32"} and ef.default_space() == "cosine"
    assert not ef.is_legacy()
    with pytest.raises(InputError, match="cannot store the load option"):
        FlareEmbeddingFunction(prompted_bundle, spin=True)
    with pytest.raises(InputError, match="one model"):
        ef.validate_config_update(ef.get_config(), {"model": "/elsewhere"})
    with pytest.raises(InputError, match="needs 'model'"):
        FlareEmbeddingFunction.build_from_config({})
    with pytest.raises(InputError, match="cannot embed"):
        FlareEmbeddingFunction(tiny_tagger)
