"""The engine: a verified bundle, a backend session, tokenization, batching and the pure
post-processing of outputs, behind one model object.

Surfaces (the CLI, the file job, the HTTP service, the serverless handler, Ray Data and the
transformers-compatible pipelines) use only the names re-exported here; the engine imports no
surface (``tests/test_layout.py`` checks both directions).

* :mod:`.tasks` — the task registry: what each task is, its options and limits;
* :mod:`.bundle` — the manifest and the verified bytes of a bundle directory;
* :mod:`.session` / :mod:`.openvino_session` — the backends, behind one small session protocol;
* :mod:`.tokenization` — texts to token windows; :mod:`.batching` — length batches and padding;
* :mod:`.postprocess` — pooling, softmax, top-k, word and entity grouping (pure numpy);
* :mod:`.model` — :class:`FlareModel`, which owns one session and one tokenizer.
"""

from ._json import to_jsonable
from .bundle import MANIFEST_NAME, Manifest, SpecialTokens, open_bundle, read_manifest
from .model import FlareModel, Label, MaskPrediction, TagResult, load
from .postprocess import Entity, WordLabel, class_scores
from .session import available_cpus
from .tasks import EXPORT_TASKS, LOAD_OPTIONS, MAX_TOP_K, TASKS, Option, TaskSpec, get_task, parse_load_options
from .tokenization import check_texts

__all__ = [
    "load",
    "FlareModel",
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
    "parse_load_options",
    "Manifest",
    "SpecialTokens",
    "MANIFEST_NAME",
    "open_bundle",
    "read_manifest",
    "available_cpus",
    "check_texts",
    "class_scores",
    "to_jsonable",
]
