"""flare-onnx's export side (installed as ``flare_onnx_export`` with ``flare-onnx[export]``).

It needs torch, transformers, onnx and onnxruntime's quantization tools; the runtime package
``flare_onnx`` never imports it.
"""

from .checkpoint import DEFAULT_MODEL
from .exporter import export_bundle
from .reference import write_reference
from .sample import italian_sentences, read_corpus

__all__ = ["export_bundle", "write_reference", "italian_sentences", "read_corpus", "DEFAULT_MODEL"]
