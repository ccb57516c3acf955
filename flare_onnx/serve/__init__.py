"""``flare-onnx serve``: the HTTP service (``pip install ".[serve]"``, from a clone).

``flare_onnx.serve`` keeps its documented names: :func:`serve`, :func:`create_app` and
:class:`ServeConfig`; :class:`ModelEntry` and :class:`ModelSet` serve several models at once.
"""

from .app import ServeConfig, create_app, serve
from .models import ModelEntry, ModelSet

__all__ = ["ModelEntry", "ModelSet", "ServeConfig", "create_app", "serve"]
