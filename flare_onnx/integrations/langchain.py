"""LangChain embeddings from a flare-onnx bundle (``pip install ".[langchain]"``: langchain-core).

    >>> from flare_onnx.integrations.langchain import FlareEmbeddings
    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> store = InMemoryVectorStore(FlareEmbeddings("artifacts/e5-it-onnx"))
    >>> store.add_texts(["Il gatto dorme sul divano.", "Piove a Milano."])
    >>> store.similarity_search("Dove dorme il gatto?", k=1)

Queries get the bundle's ``query`` prompt and documents its ``passage`` (or ``document``)
prompt, as E5 models expect; a bundle without prompts embeds both as they are.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from ..engine import FlareModel
from ._embedder import Embedder

__all__ = ["FlareEmbeddings"]


class FlareEmbeddings(Embeddings):
    """:class:`langchain_core.embeddings.Embeddings` answered by a flare-onnx model in this
    process (no service): unit-length vectors, so cosine and inner product rank alike.

    Args:
        model: a loaded :class:`~flare_onnx.FlareModel`, or a bundle directory, checkpoint
            directory or Hugging Face id, loaded with ``load_options``.
        options: ``query_prompt``, ``document_prompt`` (names of stored prompts; default: the
            bundle's ``query``, and ``passage`` or ``document``; ``""`` for none) and
            :func:`flare_onnx.load`'s keyword arguments, as :class:`._embedder.Embedder` takes them.

    The async methods run the engine in a worker thread, so an event loop keeps serving while
    a batch is embedded (onnxruntime releases the GIL).
    """

    def __init__(self, model: FlareModel | str | Path, **options: Any) -> None:
        self.embedder = Embedder(model, **options)

    @property
    def model(self) -> FlareModel:
        return self.embedder.model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.documents(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.queries([text])[0].tolist()  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def __repr__(self) -> str:
        e = self.embedder
        return f"FlareEmbeddings({e.source!r}, query_prompt={e.query_prompt!r}, document_prompt={e.document_prompt!r})"
