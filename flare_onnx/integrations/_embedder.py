"""What the embedding integrations share: a model from a bundle path, a Hub id or a loaded
:class:`~flare_onnx.FlareModel`, and the stored prompts that tell queries from documents."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import FlareModel, load
from ..errors import InputError

__all__ = ["Embedder", "QUERY_PROMPTS", "DOCUMENT_PROMPTS"]

#: prompt names read as "a query" and "a document", in order of preference (E5 stores
#: ``query``/``passage``; sentence-transformers models often ``query``/``document``)
QUERY_PROMPTS = ("query",)
DOCUMENT_PROMPTS = ("passage", "document")


def _first(names: Sequence[str], prompts: dict[str, str]) -> str:
    return next((n for n in names if n in prompts), "")


class Embedder:
    """Embeds queries and documents with a model's own prompts, one engine call per list.

    Args:
        model: a loaded model, or what :func:`flare_onnx.load` takes (a bundle directory, a
            checkpoint directory or a Hugging Face id), loaded with ``load_options``.
        query_prompt: the stored prompt put before queries; by default ``query`` when the
            model has one, else none (``""``).
        document_prompt: the stored prompt put before documents; by default ``passage`` or
            ``document`` when the model has one, else none.
        load_options: :func:`flare_onnx.load`'s keyword arguments (``precision``, ``threads``…).
    """

    def __init__(
        self,
        model: FlareModel | str | Path,
        *,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        **load_options: Any,
    ) -> None:
        if isinstance(model, FlareModel):
            if load_options:
                raise InputError(f"load options {sorted(load_options)} need a path, not a loaded model")
            self.model = model
            self.source = str(model.path)
        else:
            self.source = str(Path(model).resolve()) if Path(model).exists() else str(model)
            self.model = load(self.source, **load_options)
        if "embed" not in self.model.tasks:
            raise InputError(f"{self.source} cannot embed (its tasks: {', '.join(self.model.tasks)})")
        prompts = self.model.prompts
        self.query_prompt = _first(QUERY_PROMPTS, prompts) if query_prompt is None else query_prompt
        self.document_prompt = _first(DOCUMENT_PROMPTS, prompts) if document_prompt is None else document_prompt
        for name in (self.query_prompt, self.document_prompt):
            if name and name not in prompts:
                known = ", ".join(map(repr, prompts)) or "none"
                raise InputError(f"{self.source} has no prompt {name!r}; its prompts: {known}")
        self.load_options = dict(load_options)

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [len(texts), dim]``, unit length (an empty list gives ``[0, dim]``)."""
        return self._embed(list(texts), self.document_prompt)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), self.query_prompt)

    def _embed(self, texts: list[str], prompt: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.manifest.hidden_size), np.float32)
        return self.model.embed(texts, prompt=prompt)
