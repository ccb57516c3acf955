"""The ``flare_onnx`` spaCy pipeline component (``pip install ".[spacy]"``: spaCy 3.8).

    >>> import spacy
    >>> nlp = spacy.blank("it")
    >>> nlp.add_pipe("flare_onnx", config={"bundle": "artifacts/flare-it-ner-onnx"})
    >>> [(e.text, e.label_) for e in nlp("Mario Rossi vive a Roma.").ents]

spaCy finds the factory through the ``spacy_factories`` entry point, so no import is needed.
What the component sets follows the bundle (``annotate="auto"``; ``annotate="tag"`` puts any
tagger's labels in ``token.tag_``):

* a tagging bundle whose labels are all UPOS tags sets ``token.pos_``;
* a tagging bundle with IOB/BIOES labels (``B-PER``, ``I-LOC``, ``O``…) sets ``doc.ents``
  (and with them ``token.ent_iob_``/``ent_type_``), grouped as :meth:`FlareModel.tag` groups them;
* any other tagging bundle sets ``token.tag_``;
* a bundle that embeds (feature-extraction, fill-mask) sets ``doc.vector`` to the sentence
  embedding (unit length), and ``doc.similarity`` compares those vectors (cosine); spans and
  tokens get no vectors (each would be one more model call).

Tokens are matched by character offsets, never by assuming the two tokenizations agree: a
spaCy token takes the label of the first model word that overlaps it ("dell'" and "l'Italia",
numbers, emoji, runs of spaces). Whitespace tokens get ``SPACE`` as their part of speech and no
entity. ``nlp.pipe(texts, batch_size=N)`` sends each batch as one request to the engine.

``nlp.to_disk`` writes the bundle's path in the pipeline's config (``spacy.load`` loads it from
there again), or, with ``copy_bundle=True``, a copy of the bundle inside the pipeline's folder
(``spacy.load`` then needs nothing else).
"""

from __future__ import annotations

import shutil
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from spacy.language import Language
from spacy.scorer import Scorer, get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example

from ..engine import FlareModel, WordLabel, entity_runs, get_task, load
from ..errors import FlareOnnxError, InputError, TextError

__all__ = ["FlareComponent", "BundleNotReadError", "make_flare_onnx", "UPOS", "token_labels"]

#: Universal Dependencies' 17 part-of-speech tags
UPOS = frozenset("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
_ANNOTATE = ("auto", "pos", "ents", "tag", "vector")


class BundleNotReadError(InputError, AttributeError):
    """``component.model`` before the bundle is open. Also an ``AttributeError``: spaCy checks
    its components against protocols with ``hasattr`` (``ListenedToComponent`` includes
    ``model``) while loading a pipeline, before ``from_disk`` has read the copied bundle."""


_BUNDLE_DIR = "bundle"
_VECTOR_KEY = "flare_onnx.vector"


def _kind(model: FlareModel) -> str:
    """What a bundle annotates: ``pos``, ``ents``, ``tag`` or ``vector``."""
    labels = model.manifest.labels or ()
    if "tag" not in model.tasks:
        if "embed" not in model.tasks:
            raise InputError(f"a spaCy component needs a tagging or embedding bundle; this one offers {model.tasks}")
        return "vector"
    if labels and set(labels) <= UPOS:
        return "pos"
    if labels and all(x == "O" or x[:2] in ("B-", "I-", "E-", "S-", "L-", "U-") for x in labels):
        return "ents"
    return "tag"


def token_labels(doc: Doc, words: Sequence[WordLabel]) -> list[str | None]:
    """Each spaCy token's label: the label of the first model word that overlaps its characters
    (``None`` where none does: whitespace, or text past what the model read)."""
    starts = [w.start for w in words]
    out: list[str | None] = []
    for token in doc:
        lo, hi = token.idx, token.idx + len(token)
        i = max(bisect_right(starts, lo) - 1, 0)
        label = None
        while i < len(words) and words[i].start < hi:
            if words[i].end > lo:
                label = words[i].label
                break
            i += 1
        out.append(label)
    return out


def _stored_vector(doc: Doc) -> np.ndarray:
    return doc.user_data[_VECTOR_KEY]  # type: ignore[no-any-return]


def _cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a.vector, np.float32), np.asarray(b.vector, np.float32)
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm else 0.0


class FlareComponent:
    """A spaCy pipeline component answered by a flare-onnx bundle (see the module's docs)."""

    def __init__(
        self,
        nlp: Language,
        name: str,
        *,
        bundle: str,
        annotate: str = "auto",
        copy_bundle: bool = False,
        window: str = "sliding",
        aggregation: str = "first",
        load_options: dict[str, Any] | None = None,
    ) -> None:
        if annotate not in _ANNOTATE:
            raise InputError(f"annotate must be one of {', '.join(_ANNOTATE)}, not {annotate!r}")
        self.name, self.vocab = name, nlp.vocab
        self.bundle, self.annotate, self.copy_bundle = bundle, annotate, copy_bundle
        get_task("tag").parse_options({"window": window, "aggregation": aggregation})  # bad values: now
        self.window, self.aggregation = window, aggregation
        self.load_options = dict(load_options or {})
        self._model: FlareModel | None = None
        self._kind = ""
        if not (copy_bundle and not Path(bundle).exists()):  # a copied bundle comes with from_disk
            self._open(bundle)

    def _open(self, source: str | Path) -> None:
        model = load(source, **self.load_options)
        kind = _kind(model)
        if self.annotate == "tag" and kind in ("pos", "ents"):
            kind = "tag"  # any tagger's labels fit token.tag_
        elif self.annotate not in ("auto", kind):
            raise InputError(f"{source} annotates {kind!r}, not {self.annotate!r}")
        self._model, self._kind = model, kind

    @property
    def model(self) -> FlareModel:
        if self._model is None:
            raise BundleNotReadError(f"the bundle {self.bundle} is missing and no copy was read (nlp.from_disk)")
        return self._model

    @property
    def labels(self) -> tuple[str, ...]:
        """The bundle's labels (none yet while a copied bundle waits for ``from_disk``)."""
        return tuple(self._model.manifest.labels or ()) if self._model is not None else ()

    def __call__(self, doc: Doc) -> Doc:
        self._annotate([doc])
        return doc

    def pipe(self, docs: Iterable[Doc], *, batch_size: int = 64) -> Iterator[Doc]:
        batch: list[Doc] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_size:
                yield from self._annotate(batch)
                batch = []
        if batch:
            yield from self._annotate(batch)

    def _annotate(self, docs: list[Doc]) -> list[Doc]:
        has_text = [bool(d.text.strip()) for d in docs]  # an empty or blank doc has nothing for the model
        todo = [d for d, keep in zip(docs, has_text) if keep]
        texts = [d.text for d in todo]
        try:
            if self._kind == "vector":
                for doc, vector in zip(todo, self.model.embed(texts) if texts else []):
                    doc.user_data[_VECTOR_KEY] = vector  # pickled with the doc (nlp.pipe(n_process=...))
                    doc.user_hooks["vector"] = _stored_vector
                    doc.user_hooks["similarity"] = _cosine
                return docs
            results = iter(self.model.tag(texts, window=self.window, aggregation=self.aggregation) if texts else [])
        except TextError as exc:  # its index is its place among the batch's non-blank docs
            text = texts[exc.index]
            where = f"doc {docs.index(todo[exc.index])} of the batch ({text[:40]!r}{'…' if len(text) > 40 else ''})"
            raise InputError(f"spaCy component {self.name!r}: {where} {exc.reason}") from exc
        except FlareOnnxError as exc:
            raise type(exc)(f"spaCy component {self.name!r}: {exc}") from exc
        for doc, keep in zip(docs, has_text):
            words = next(results).words if keep else []
            self._set(doc, token_labels(doc, words))
        return docs

    def _set(self, doc: Doc, labels: list[str | None]) -> None:
        if self._kind == "pos":
            for token, label in zip(doc, labels):
                token.pos_ = label or ("SPACE" if token.is_space else "")
        elif self._kind == "tag":
            for token, label in zip(doc, labels):
                token.tag_ = label or ""
        else:
            tags = [label or "O" for label in labels]
            doc.set_ents(
                [Span(doc, idx[0], idx[-1] + 1, label=kind) for kind, idx in entity_runs(tags)],
                default="outside",
            )

    def score(self, examples: Iterable[Example], **kwargs: Any) -> dict[str, Any]:
        """spaCy's own scores for what this component sets (``pos_acc``, ``ents_f``…)."""
        if self._kind == "pos":
            return Scorer.score_token_attr(examples, "pos", **kwargs)
        if self._kind == "tag":
            return Scorer.score_token_attr(examples, "tag", **kwargs)
        if self._kind == "ents":
            return get_ner_prf(examples, **kwargs)
        return {}

    # -- serialization: the bundle's path (in the config) or a copy in the pipeline's folder --

    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.copy_bundle:
            target = path / _BUNDLE_DIR
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(self.model.path, target)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> FlareComponent:
        copy = Path(path) / _BUNDLE_DIR
        if self.copy_bundle and copy.is_dir():
            self._open(copy)
        return self


@Language.factory(
    "flare_onnx",
    default_config={
        "bundle": None,
        "annotate": "auto",
        "copy_bundle": False,
        "window": "sliding",
        "aggregation": "first",
        "load_options": {},
    },
)
def make_flare_onnx(
    nlp: Language,
    name: str,
    bundle: str | None,
    annotate: str,
    copy_bundle: bool,
    window: str,
    aggregation: str,
    load_options: dict[str, Any],
) -> FlareComponent:
    """spaCy's factory (``nlp.add_pipe("flare_onnx", config={"bundle": ...})``)."""
    if not bundle:
        raise InputError('the flare_onnx component needs config={"bundle": "path/or/hub-id"}')
    return FlareComponent(
        nlp,
        name,
        bundle=str(bundle),
        annotate=annotate,
        copy_bundle=copy_bundle,
        window=window,
        aggregation=aggregation,
        load_options=load_options,
    )
