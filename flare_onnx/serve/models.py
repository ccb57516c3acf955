"""The models one service serves: their names, limits, loading, and reload without downtime.

``flare-onnx serve ner=./ner pos=./pos embed=./e5`` serves three bundles from one process; a
request picks one by name (``/v1/models/{name}/{task}``, or the ``model`` field of an OpenAI
request). Every model is loaded and verified before the service answers. A reload (``SIGHUP``,
or ``POST /v1/reload``) loads and verifies each bundle whose manifest changed on disk, then
swaps it in: requests admitted before the swap finish on the model they were admitted for, and
a bundle that fails verification leaves the old model serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import MANIFEST_NAME, MODEL_NAME, FlareModel, Limits, bundle_name, load
from ..errors import BundleError, FlareOnnxError, InputError
from .config import HTTPError

__all__ = ["ModelEntry", "ModelSet", "Served", "default_name", "parse_model_args"]

NAME_PATTERN = MODEL_NAME
default_name = bundle_name

log = logging.getLogger("flare_onnx.serve")


@dataclass(frozen=True)
class ModelEntry:
    """One model to serve: its name, its bundle (a folder or a Hub id), and its request limits
    (``None``: the service's)."""

    name: str
    bundle: str
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise InputError(
                f"{self.name!r} is not a model name: use letters, digits, '.', '_' and '-' "
                "(at most 64, starting with a letter or digit)"
            )


@dataclass
class Served:
    """A model as the service holds it; ``model`` changes on a reload."""

    entry: ModelEntry
    model: FlareModel
    limits: Limits
    digest: str  # the loaded bundle's fingerprint (_fingerprint): what a reload compares

    @property
    def created(self) -> int:
        """When the bundle was written (its manifest's time; Unix seconds), as OpenAI's model
        objects say."""
        try:
            return int((self.model.path / MANIFEST_NAME).stat().st_mtime)
        except OSError:
            return 0


def parse_model_args(args: Iterable[str], name: str | None = None) -> tuple[list[ModelEntry], bool]:
    """``serve``'s bundle arguments — ``PATH`` or ``NAME=PATH``, several at once — as entries,
    and whether the user named them (named services match the OpenAI ``model`` field strictly).

    Raises:
        InputError: a bad or repeated name, ``--name`` with several bundles.
    """
    args = list(args)
    if name is not None and len(args) != 1:
        raise InputError("--name names a single bundle; with several, give each as NAME=PATH")
    entries: list[ModelEntry] = []
    named = name is not None
    for arg in args:
        left, sep, right = arg.partition("=")
        if sep and NAME_PATTERN.fullmatch(left):
            if not right:
                raise InputError(f"{arg!r}: give the bundle after '=' (NAME=PATH)")
            entries.append(ModelEntry(left, right))
            named = True
        else:  # a path (which may itself hold '=')
            entries.append(ModelEntry(name or default_name(arg), arg))
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise InputError(f"two models are named {entry.name!r}: name each as NAME=PATH")
        seen.add(entry.name)
    return entries, named


def _fingerprint(path: Path) -> str:
    """What a reload compares: the manifest's bytes, and the size and time of every file it
    lists (a graph changed under an unchanged manifest is a change too: it then fails
    verification, and the old model goes on serving)."""
    try:
        manifest = (path / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        return f"unreadable: {exc}"
    digest = hashlib.sha256(manifest)
    try:
        files = json.loads(manifest).get("files", {})
    except (ValueError, AttributeError):
        files = {}
    for name in sorted(files if isinstance(files, dict) else ()):
        try:
            st = (path / name).stat()
            digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{name}:missing".encode())
    return digest.hexdigest()


def _digest(model: FlareModel) -> str:
    return _fingerprint(model.path)


def _load(entry: ModelEntry, options: Mapping[str, Any], limits: Limits) -> Served:
    try:
        model = load(entry.bundle, **options)
    except FlareOnnxError as exc:
        raise BundleError(f"cannot serve {entry.name!r} ({entry.bundle}): {exc}") from exc
    return Served(entry, model, entry.limits or limits, _digest(model))


@dataclass
class ModelSet:
    """The service's models by name, in the order given; the first is the default (the one
    ``/v1/{task}`` serves). ``strict``: the OpenAI ``model`` field must name one of them (with
    a single bundle given without a name, any ``model`` gets it, as OpenAI clients insist on
    sending one)."""

    served: dict[str, Served]
    strict: bool
    options: dict[str, Any] = field(default_factory=dict)
    _reloading: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(
        cls, entries: list[ModelEntry], *, strict: bool, options: Mapping[str, Any] | None, limits: Limits
    ) -> ModelSet:
        """Load and verify every model; the first that fails stops the start, naming it."""
        if not entries:
            raise InputError("give at least one bundle to serve")
        opts = dict(options or {})
        return cls({e.name: _load(e, opts, limits) for e in entries}, strict, opts)

    @classmethod
    def of(
        cls,
        models: Mapping[str, FlareModel],
        limits: Limits,
        *,
        strict: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> ModelSet:
        """Models already loaded (tests, embedding the service in a program); ``options`` are
        the :func:`flare_onnx.load` options a reload loads them with again."""
        served = {
            name: Served(ModelEntry(name, str(model.path)), model, limits, _digest(model))
            for name, model in models.items()
        }
        return cls(served, strict, dict(options or {}))

    @property
    def default(self) -> Served:
        return next(iter(self.served.values()))

    @property
    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name: str) -> Served:
        """The model called ``name``.

        Raises:
            HTTPError: 404 naming the models served.
        """
        served = self.served.get(name)
        if served is None:
            raise HTTPError(404, f"no model {name!r} here; this service serves {', '.join(map(repr, self.served))}")
        return served

    def for_openai(self, name: Any) -> Served:
        """The model an OpenAI request's ``model`` field asks for."""
        if not self.strict and len(self.served) == 1:
            return self.default
        if not isinstance(name, str):
            raise HTTPError(400, f"say which model in the field 'model': one of {', '.join(map(repr, self.served))}")
        return self.get(name)

    def reload(self, names: Iterable[str] | None = None, warm: Any = None) -> dict[str, str]:
        """Load and verify each named model (all by default) whose bundle changed, and swap it
        in; ``warm(name, model)`` runs on a new model before the swap. What happened to each:
        ``unchanged``, ``reloaded``, or ``kept: reason`` (the old model goes on serving).

        Raises:
            HTTPError: 409 while another reload runs.
        """
        if not self._reloading.acquire(blocking=False):
            raise HTTPError(409, "a reload is already running")
        try:
            return {name: self._reload_one(self.get(name), warm) for name in (names or list(self.served))}
        finally:
            self._reloading.release()

    def _reload_one(self, served: Served, warm: Any) -> str:
        if _fingerprint(served.model.path) == served.digest:
            return "unchanged"
        try:
            fresh = _load(served.entry, self.options, served.limits)
            if warm is not None:
                warm(served.entry.name, fresh.model)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            log.warning("flare-onnx: reload of %r failed, the old model goes on serving: %s", served.entry.name, exc)
            return f"kept: {exc}"
        served.model, served.digest = fresh.model, fresh.digest
        log.warning("flare-onnx: reloaded %r (%s)", served.entry.name, served.entry.bundle)
        return "reloaded"
