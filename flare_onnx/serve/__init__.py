"""``flare-onnx serve``: the HTTP service (``pip install ".[serve]"``, from a clone).

``flare_onnx.serve`` keeps its documented names: :func:`serve`, :func:`create_app` and
:class:`ServeConfig`.
"""

from .app import ServeConfig, create_app, serve

__all__ = ["ServeConfig", "create_app", "serve"]
