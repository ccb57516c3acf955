"""Find external-data references in a serialized ONNX model without importing ``onnx``.

Bundles hold single-file graphs. A graph whose tensors point at external files is refused
before onnxruntime sees it: the external-data path has a history of traversal and symlink
CVEs, and a model loaded from bytes resolves such paths against the working directory.
The walk follows only the message fields that can hold tensors (ONNX ``onnx.proto3``).
"""

from __future__ import annotations

from collections.abc import Iterator

# message name -> {field number: message name of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "Model": {7: "Graph", 25: "Function"},
    "Function": {7: "Node"},
    "Graph": {1: "Node", 5: "Tensor", 15: "SparseTensor"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "SparseTensor", 23: "SparseTensor"},
    "SparseTensor": {1: "Tensor", 2: "Tensor"},
    "Tensor": {},
}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedModel("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise MalformedModel("field runs past the end of the message")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise MalformedModel(f"unsupported wire type {wire}")
    if pos != end:
        raise MalformedModel("message runs past its end")


def has_external_data(model: bytes) -> bool:
    """True when any tensor in the model (graphs, subgraphs, functions) may be read from a file.

    A tensor can name an external file only through an ``external_data`` entry keyed
    ``location`` (the ONNX spec; onnxruntime reads the path from that key alone), so bytes that
    never spell ``location`` need no walk: one byte search, a few milliseconds for the
    reference bundle's INT8 graph where the walk in Python takes ~30 ms.

    Raises:
        MalformedModel: the bytes are not a protobuf message (found by the walk only).
    """
    if b"location" not in model:
        return False
    stack: list[tuple[str, memoryview]] = [("Model", memoryview(model))]
    while stack:
        kind, buf = stack.pop()
        children = _SCHEMA[kind]
        for number, wire, value in _fields(buf):
            if kind == "Tensor":
                if number == _TENSOR_EXTERNAL_DATA and wire == 2:
                    return True
                if number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
                    return True
            elif wire == 2 and number in children:
                assert isinstance(value, memoryview)
                stack.append((children[number], value))
    return False
