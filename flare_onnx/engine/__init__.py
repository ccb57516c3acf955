"""The engine: a verified bundle, a backend session, tokenization, batching and the pure
post-processing of outputs, behind one model object.

Surfaces (the CLI, the file job, the HTTP service, the serverless handler, Ray Data and the
transformers-compatible pipelines) use only the names re-exported here; the engine imports no
surface (``tests/test_layout.py`` checks both directions).

* :mod:`.tasks` — the task registry: what each task is and its options; :mod:`.runners` —
  what each built-in task makes of the graph's outputs;
* :mod:`.request` — one request path: a task, options parsed once, texts checked against one
  :class:`Limits` and encoded once;
* :mod:`.bundle` — the manifest and the verified bytes of a bundle directory;
* :mod:`.session` / :mod:`.openvino_session` — the backends, behind one small session protocol;
  :mod:`.backends` — which one ``backend="auto"`` picks, and why;
* :mod:`.tokenization` — texts to token windows; :mod:`.batching` — length batches and padding;
* :mod:`.postprocess` — pooling, softmax, top-k, word and entity grouping (pure numpy);
* :mod:`.model` — :class:`FlareModel`, which owns one session and one tokenizer.
"""

from ._json import to_jsonable
from .backends import BackendChoice, choose_backend
from .cache import cache_root
from .bundle import (
    HUB_ID,
    MANIFEST_NAME,
    MODEL_NAME,
    Manifest,
    bundle_name,
    open_bundle,
    read_manifest,
    verify_bundle,
)
from .model import FlareModel, Outcome, load
from .postprocess import Entity, WordLabel, class_scores, entity_runs, similarity
from .request import Limits, Request, merge_requests, payload_parts
from .runners import Label, MaskPrediction, TagResult
from .session import available_cpus
from .options import LOAD_OPTIONS, MAX_TOP_K, Option, TaskSpec, parse_load_options
from .tasks import EXPORT_TASKS, TASKS, get_task, register_task, unregister_task
from .tokenization import SpecialTokens, check_texts

__all__ = [
    "load",
    "FlareModel",
    "Outcome",
    "Request",
    "Limits",
    "merge_requests",
    "payload_parts",
    "MaskPrediction",
    "Label",
    "TagResult",
    "WordLabel",
    "Entity",
    "TASKS",
    "EXPORT_TASKS",
    "LOAD_OPTIONS",
    "MAX_TOP_K",
    "Option",
    "TaskSpec",
    "get_task",
    "register_task",
    "unregister_task",
    "parse_load_options",
    "Manifest",
    "SpecialTokens",
    "MANIFEST_NAME",
    "HUB_ID",
    "MODEL_NAME",
    "bundle_name",
    "cache_root",
    "open_bundle",
    "read_manifest",
    "verify_bundle",
    "available_cpus",
    "BackendChoice",
    "choose_backend",
    "check_texts",
    "class_scores",
    "entity_runs",
    "similarity",
    "to_jsonable",
]
