"""The OpenAI-compatible embeddings adapter: ``POST /v1/embeddings`` as OpenAI, TEI and vLLM
answer it (the embed task with its defaults, float or base64 vectors, usage in tokens, and
OpenAI's error shape). The request itself goes through the engine's one request path."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .config import HTTPError

__all__ = ["openai_texts", "openai_answer", "openai_error_body"]

_FIELDS = {"input", "model", "encoding_format", "user", "dimensions"}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


def openai_texts(payload: Any) -> tuple[list[str], str]:
    """The texts and the encoding (``float`` or ``base64``) of an OpenAI embeddings request.

    Raises:
        HTTPError: 400 for a body OpenAI would refuse.
    """
    if not isinstance(payload, dict):
        raise HTTPError(400, 'the body must be a JSON object like {"input": "...", "model": "..."}')
    unknown = set(payload) - _FIELDS
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
    if payload.get("dimensions") is not None:
        raise HTTPError(400, "dimensions is not supported: this model's embeddings have a fixed size")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise HTTPError(400, f"encoding_format must be 'float' or 'base64', not {encoding!r}")
    raw = payload.get("input")
    if _token_ids(raw):
        raise HTTPError(
            400,
            "input holds token ids, which only OpenAI's own tokenizer makes: send the texts, this service "
            "tokenizes them (LangChain's OpenAIEmbeddings sends ids unless check_embedding_ctx_length=False)",
        )
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise HTTPError(400, "input must be a string or a non-empty list of strings (token arrays are not supported)")
    return texts, encoding


def _token_ids(raw: Any) -> bool:
    """An input of token ids: a list of integers, or a list of such lists (OpenAI takes both)."""
    if not isinstance(raw, list) or not raw:
        return False
    rows = raw if all(isinstance(r, list) for r in raw) else [raw]
    return all(r and all(isinstance(t, int) and not isinstance(t, bool) for t in r) for r in rows)


def openai_answer(vectors: list[Any], encoding: str, model_name: str, tokens: int) -> dict[str, Any]:
    """The OpenAI response body for the vectors of one request."""
    data = []
    for i, vector in enumerate(vectors):
        array = np.asarray(vector, dtype="<f4")
        value: Any = base64.b64encode(array.tobytes()).decode("ascii") if encoding == "base64" else array.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": _CODES.get(status)}}
