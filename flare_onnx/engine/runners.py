"""What each built-in task does with the graph's outputs: one function per task, from a
:class:`~flare_onnx.engine.request.Request` to one result per text.

A runner is typed against :class:`TaskModel`, the small protocol of what it reads from a model
(:class:`~flare_onnx.engine.model.FlareModel` implements it), so this module imports neither
the model nor the bundle reader. It uses only the model's public engine API (:meth:`window_outputs`,
:meth:`mask_probabilities`, :meth:`label_probabilities`, :meth:`class_logits`) and the pure
functions of :mod:`.postprocess`; the registry (:mod:`.tasks`) names it as the task's ``run``.
A new task is one :class:`~flare_onnx.engine.tasks.TaskSpec` with its runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from tokenizers import Encoding

from .postprocess import (
    Entity,
    WindowPool,
    WordLabel,
    aggregate_words,
    class_scores,
    group_entities,
    l2_normalize,
    top_k,
)

from .request import Request
from .tokenization import Window

__all__ = ["TaskModel", "MaskPrediction", "Label", "TagResult", "run_fill_mask", "run_embed", "run_tag", "run_classify"]


class _ModelFacts(Protocol):
    @property
    def hidden_size(self) -> int: ...
    @property
    def labels(self) -> tuple[str, ...] | None: ...
    @property
    def pooling(self) -> str: ...
    @property
    def normalize(self) -> bool: ...


class _Vocabulary(Protocol):
    def id_to_token(self, token_id: int) -> str: ...


class TaskModel(Protocol):
    """What a runner reads from a model: the manifest's sizes, labels and embedding defaults, the vocabulary, and
    the graph's outputs for a checked request."""

    @property
    def manifest(self) -> _ModelFacts: ...
    @property
    def tokenizer(self) -> _Vocabulary: ...
    @property
    def class_function(self) -> str: ...
    def window_outputs(self, request: Request) -> Iterator[tuple[Window, dict[str, np.ndarray]]]: ...
    def mask_probabilities(self, request: Request) -> list[np.ndarray]: ...
    def label_probabilities(self, request: Request) -> list[tuple[Encoding, np.ndarray]]: ...
    def class_logits(self, request: Request) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskPrediction:
    """One candidate for one ``<mask>``: the vocabulary token, its id and probability."""

    token: str
    token_id: int
    score: float


@dataclass(frozen=True)
class Label:
    """A class label and its probability."""

    label: str
    score: float


@dataclass(frozen=True)
class TagResult:
    """Token classification of one text: a label per word, and the grouped entities."""

    words: list[WordLabel]
    entities: list[Entity]


def run_fill_mask(model: TaskModel, request: Request) -> list[list[list[MaskPrediction]]]:
    """Per text, per mask, the ``top_k`` candidates."""
    k = request.options["top_k"]
    results = []
    for probs in model.mask_probabilities(request):
        ids, scores = top_k(probs, k)
        results.append(
            [
                [MaskPrediction(model.tokenizer.id_to_token(int(t)), int(t), float(s)) for t, s in zip(id_row, s_row)]
                for id_row, s_row in zip(ids, scores)
            ]
        )
    return results


def run_embed(model: TaskModel, request: Request) -> list[np.ndarray]:
    """Per text, its pooled (and by default unit-length) embedding."""
    pool = WindowPool(len(request.texts), model.manifest.hidden_size)
    for window, out in model.window_outputs(request):
        pool.add(window.text_index, out["last_hidden_state"], window.keep)
    options, manifest = request.options, model.manifest
    emb = pool.result(options["pooling"] or manifest.pooling)
    if manifest.normalize if options["normalize"] is None else options["normalize"]:
        emb = l2_normalize(emb)
    return list(emb)


def run_tag(model: TaskModel, request: Request) -> list[TagResult]:
    """Per text, a label per word and the entities they form."""
    labels = model.manifest.labels or ()
    results = []
    for text, (enc, probs) in zip(request.texts, model.label_probabilities(request)):
        n = len(probs)
        words = aggregate_words(
            text, probs, enc.word_ids[:n], enc.offsets[:n], labels, aggregation=request.options["aggregation"]
        )
        results.append(TagResult(words=words, entities=group_entities(text, words)))
    return results


def run_classify(model: TaskModel, request: Request) -> list[list[Label]]:
    """Per text, its ``top_k`` labels (all when ``top_k`` is ``None``)."""
    labels = model.manifest.labels or ()
    k = request.options["top_k"]
    scores = class_scores(model.class_logits(request), model.class_function)
    ids, values = top_k(scores, len(labels) if k is None else k)
    return [[Label(labels[int(j)], float(s)) for j, s in zip(i_row, s_row)] for i_row, s_row in zip(ids, values)]
