"""flare-onnx inside the libraries its users already work in, each behind its own extra:

* :mod:`flare_onnx.integrations.langchain` — ``FlareEmbeddings``, LangChain's ``Embeddings``
  (``pip install ".[langchain]"``);
* :mod:`flare_onnx.integrations.chroma` — ``FlareEmbeddingFunction``, Chroma's
  ``EmbeddingFunction``, persisted with its collection (``pip install ".[chroma]"``);
* :mod:`flare_onnx.integrations.spacy` — the ``flare_onnx`` pipeline component
  (``pip install ".[spacy]"``; spaCy finds it through its entry points);
* :mod:`flare_onnx.spark` — Spark's ``mapInPandas`` job (``pip install ".[spark]"``).

``import flare_onnx`` imports none of them, nor their libraries (docs/integrations.md).
"""
