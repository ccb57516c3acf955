"""One request path: a task, its options parsed once, texts checked against one limits
object, encoded once and cut into windows; every surface builds a :class:`Request` with
:meth:`FlareModel.request <flare_onnx.engine.model.FlareModel.request>` and the engine runs it.

The HTTP service builds the request off the event loop (its work check *is* the encoding) and
hands the same object to its batcher, which merges compatible requests with
:func:`merge_requests`; nothing is tokenized twice.

    >>> req = model.request("embed", ["Il gatto dorme."], {"normalize": False}, limits=Limits.SERVICE)
    >>> req.tokens
    7
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from tokenizers import Encoding

from ..errors import InputError, RequestTooLarge, TextError
from .options import TaskSpec
from .tokenization import Window

__all__ = ["Limits", "Request", "merge_requests", "payload_parts"]


@dataclass(frozen=True)
class Limits:
    """How much one request may ask of the model. ``None`` lifts a limit.

    Two sets cover every surface, and this is the one place that says which surface takes
    which: :attr:`SERVICE` for requests from the network (HTTP, serverless), :attr:`TRUSTED`
    for the caller's own work (the Python API, the CLI verbs, the file job, Ray Data), where
    a list of a million texts is a batch job, not an attack. Both keep the model's own
    ``max_text_tokens`` cap on sliding windows.
    """

    max_texts: int | None = 64  # texts in one request
    max_chars: int | None = 10_000  # characters in one text
    max_request_chars: int | None = 131_072  # characters in all texts, checked before any tokenization (4 per token)
    max_tokens: int | None = 32_768  # tokens in one request, <s> and </s> included
    max_candidates: int | None = 10_000  # fill-mask: masks x top_k in one request

    SERVICE: ClassVar[Limits]
    TRUSTED: ClassVar[Limits]

    def check_texts(self, texts: Sequence[str], *, prefix: int = 0) -> None:
        """The cheap checks, on counts and characters (before tokenization). ``prefix``: the
        characters put before every text (a prefix or a stored prompt), counted in each.

        Raises:
            InputError: too many texts, or a text too long.
            RequestTooLarge: all texts together over ``max_request_chars``.
        """
        if self.max_texts is not None and len(texts) > self.max_texts:
            raise InputError(f"the request has {len(texts)} texts; at most {self.max_texts} per request")
        if self.max_chars is not None:
            for i, text in enumerate(texts):
                if prefix + len(text) > self.max_chars:
                    with_prefix = f" with its {prefix}-character prefix" if prefix else ""
                    raise TextError(i, f"has {prefix + len(text)} characters{with_prefix}; at most {self.max_chars}")
        if self.max_request_chars is not None:
            total = sum(len(t) for t in texts) + prefix * len(texts)
            if total > self.max_request_chars:
                raise RequestTooLarge(
                    f"the request holds {total} characters; at most {self.max_request_chars} per request: split it"
                )

    def check_work(self, tokens: int, candidates: int) -> None:
        """The checks on measured work: tokens, and fill-mask candidates.

        Raises:
            RequestTooLarge: over ``max_tokens`` or ``max_candidates``.
        """
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise RequestTooLarge(
                f"the request holds {tokens} tokens; at most {self.max_tokens} per request: split it "
                f"(every sliding window counts: a smaller stride reads fewer)"
            )
        if self.max_candidates is not None and candidates > self.max_candidates:
            raise RequestTooLarge(
                f"the request asks for {candidates} fill-mask candidates (masks x top_k); "
                f"at most {self.max_candidates}: lower top_k or split it"
            )


Limits.SERVICE = Limits()
Limits.TRUSTED = Limits(max_texts=None, max_chars=None, max_request_chars=None, max_tokens=None, max_candidates=None)


@dataclass(frozen=True)
class Request:
    """A checked request, ready to run: what every surface hands the engine.

    ``options`` are the task's, parsed and with every default filled in. ``encodings`` are the
    texts' (prefix applied, no special tokens); ``windows`` what the model reads; for tasks
    whose graph takes ``mask_positions``, ``mask_rows[i]`` holds the mask positions in text
    ``i``'s window. ``text_tokens[i]`` counts what the model reads of text ``i`` (``<s>``/``</s>``
    included), measured once when the request is built.
    """

    spec: TaskSpec
    texts: list[str]
    options: dict[str, Any]
    encodings: list[Encoding]
    windows: list[Window]
    mask_rows: list[np.ndarray] | None = None
    text_tokens: tuple[int, ...] = ()
    merged_from: tuple[int, ...] = field(default=())  # texts per original request, after merge_requests

    @property
    def tokens(self) -> int:
        """Tokens the model reads for the whole request."""
        return sum(self.text_tokens)

    @property
    def candidates(self) -> int:
        """Fill-mask candidates asked for: masks × ``top_k`` (0 for other tasks)."""
        if self.mask_rows is None:
            return 0
        return sum(len(rows) for rows in self.mask_rows) * int(self.options.get("top_k") or 0)

    def slices(self, max_tokens: int) -> list[Request]:
        """The request cut at text boundaries into parts of at most ``max_tokens`` tokens each
        (a text longer than that is a part of its own), in order: the unit a fair scheduler
        interleaves, so one large request cannot hold the model for everyone else."""
        bounds, start, size = [], 0, 0
        for i, n in enumerate(self.text_tokens):
            if i > start and size + n > max_tokens:
                bounds.append((start, i))
                start, size = i, 0
            size += n
        bounds.append((start, len(self.texts)))
        if len(bounds) == 1:
            return [self]
        return [self._part(lo, hi) for lo, hi in bounds]

    def _part(self, lo: int, hi: int) -> Request:
        return Request(
            spec=self.spec,
            texts=self.texts[lo:hi],
            options=self.options,
            encodings=self.encodings[lo:hi],
            windows=[replace(w, text_index=w.text_index - lo) for w in self.windows if lo <= w.text_index < hi],
            mask_rows=None if self.mask_rows is None else self.mask_rows[lo:hi],
            text_tokens=self.text_tokens[lo:hi],
        )

    def split(self, results: Sequence[Any]) -> list[list[Any]]:
        """The results of a merged request, cut back into one list per original request."""
        sizes = self.merged_from or (len(self.texts),)
        out, pos = [], 0
        for n in sizes:
            out.append(list(results[pos : pos + n]))
            pos += n
        return out


def merge_requests(requests: Sequence[Request]) -> Request:
    """One request holding the texts of several with the same task and options (the HTTP
    batcher's unit of work); :meth:`Request.split` cuts its results back apart."""
    first = requests[0]
    if any(r.spec.name != first.spec.name or r.options != first.options for r in requests):
        raise InputError("only requests for the same task with the same options can be merged")
    if len(requests) == 1:
        return first
    windows: list[Window] = []
    offset = 0
    for r in requests:
        windows += [replace(w, text_index=w.text_index + offset) for w in r.windows]
        offset += len(r.texts)
    mask_rows = None if first.mask_rows is None else [m for r in requests for m in (r.mask_rows or [])]
    return Request(
        spec=first.spec,
        texts=[t for r in requests for t in r.texts],
        options=first.options,
        encodings=[e for r in requests for e in r.encodings],
        windows=windows,
        mask_rows=mask_rows,
        text_tokens=tuple(n for r in requests for n in r.text_tokens),
        merged_from=tuple(len(r.texts) for r in requests),
    )


def payload_parts(payload: object, *, reserved: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """The texts and the (unparsed) options of a JSON request body such as the HTTP service
    and the serverless handler take: ``{"texts": [...], "top_k": 3}``. ``reserved`` names
    fields that belong to the surface (serverless: ``"task"``) rather than to the task.

    Raises:
        InputError: not an object, or no ``texts`` list.
    """
    if not isinstance(payload, Mapping):
        raise InputError('the body must be a JSON object like {"texts": ["..."]}')
    texts = payload.get("texts")
    if not isinstance(texts, list) or not texts:
        raise InputError('"texts" must be a non-empty list of strings, like {"texts": ["Il gatto dorme."]}')
    options = {k: v for k, v in payload.items() if k != "texts" and k not in reserved}
    return texts, options
