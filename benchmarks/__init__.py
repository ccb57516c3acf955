"""flare-onnx's benchmark suite: ``python -m benchmarks --help``."""
