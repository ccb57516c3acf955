"""A Chroma embedding function from a flare-onnx bundle (``pip install ".[chroma]"``: chromadb).

    >>> import chromadb
    >>> from flare_onnx.integrations.chroma import FlareEmbeddingFunction
    >>> client = chromadb.PersistentClient("index")
    >>> docs = client.create_collection("docs", embedding_function=FlareEmbeddingFunction("artifacts/e5-it-onnx"))
    >>> docs.add(ids=["1", "2"], documents=["Il gatto dorme sul divano.", "Piove a Milano."])
    >>> docs.query(query_texts=["Dove dorme il gatto?"], n_results=1)["ids"]

The function is registered with Chroma under the name ``flare_onnx``, and its configuration
(the bundle's absolute path or Hub id, the prompts and the load options) is stored with a
persisted collection: a later process that imports this module reopens the collection with
``client.get_collection("docs")`` and embeds its queries with the same model. Queries get the
bundle's ``query`` prompt and documents its ``passage`` (or ``document``) prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from ..engine import FlareModel
from ..errors import InputError
from ._embedder import Embedder

__all__ = ["FlareEmbeddingFunction"]

#: load options kept in a collection's configuration (JSON values only)
_STORED_OPTIONS = ("precision", "backend", "threads", "max_batch_tokens", "max_batch_size", "workload")


@register_embedding_function
class FlareEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma's :class:`~chromadb.api.types.EmbeddingFunction`, answered in this process.

    Args: as :class:`flare_onnx.integrations.langchain.FlareEmbeddings` (``model``,
    ``query_prompt``, ``document_prompt``, and :func:`flare_onnx.load`'s keyword arguments;
    those in ``_STORED_OPTIONS`` are stored with the collection).
    """

    def __init__(self, model: FlareModel | str | Path, **options: Any) -> None:
        load_options = set(options) - {"query_prompt", "document_prompt"}
        unstored = sorted(load_options - set(_STORED_OPTIONS))
        if unstored:
            raise InputError(f"a Chroma collection cannot store the load option(s) {unstored}")
        self.embedder = Embedder(model, **options)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.documents(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.embedder.queries(list(input)))

    @staticmethod
    def name() -> str:
        return "flare_onnx"

    def default_space(self) -> Space:
        return "cosine"  # the vectors are unit length

    def get_config(self) -> dict[str, Any]:
        e = self.embedder
        return {
            "model": e.source,
            "query_prompt": e.query_prompt,
            "document_prompt": e.document_prompt,
            "load_options": e.load_options,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> FlareEmbeddingFunction:
        FlareEmbeddingFunction.validate_config(config)
        return FlareEmbeddingFunction(
            config["model"],
            query_prompt=config.get("query_prompt"),
            document_prompt=config.get("document_prompt"),
            **config.get("load_options", {}),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("model"), str):
            raise InputError(f"a flare_onnx embedding function's config needs 'model' (a path or Hub id): {config}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        if new_config.get("model", old_config.get("model")) != old_config.get("model"):
            raise InputError("a collection's vectors come from one model: create a new collection for another")
