"""The OpenVINO backend: a compiled OpenVINO model behind the same small interface the engine
uses for an onnxruntime session (:class:`~.session.Session`: ``get_inputs``, ``get_outputs``,
``run_many``, ``streams``).

A bundle exported with ``--openvino`` carries an NNCF INT8 IR (``model.int8.xml`` and
``model.int8.bin``), made at export under the same fidelity guard as the onnxruntime INT8
graph. Its bytes are verified like every other bundle file and handed to OpenVINO from
memory. Needs ``pip install ".[openvino]"``; imported only when ``backend="openvino"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..errors import BundleError, InputError

__all__ = ["OpenVINOSession", "create_openvino_session"]


@dataclass(frozen=True)
class _Port:
    name: str


class OpenVINOSession:
    """A compiled model: ``run`` for one batch, ``run_many`` to keep every CPU stream busy
    over a sequence of batches (OpenVINO's THROUGHPUT mode: one stream per request)."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [_Port(p.get_any_name()) for p in compiled.inputs]
        self._outputs = [_Port(p.get_any_name()) for p in compiled.outputs]
        self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)] if self.streams > 1 else []

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs for one batch, in the graph's order."""
        result = self._request.infer(feeds, share_inputs=True)
        wanted = [p.name for p in self._outputs]
        by_name = {port.get_any_name(): value for port, value in result.items()}
        # copies: the request reuses its output buffers on the next call
        return [np.array(by_name[n]) for n in wanted]

    def run_many(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """Outputs of each batch, in order, with up to ``streams`` batches in flight.

        Plain infer requests, started and awaited in turn (no Python callback runs on
        OpenVINO's threads, so nothing is left to call back when a model is collected).
        """
        if self.streams == 1:
            for feeds in batches:
                yield self.run(feeds)
            return
        ports = list(self._compiled.outputs)
        free = list(self._requests)
        flight: deque[Any] = deque()

        def finish() -> list[np.ndarray]:
            request = flight.popleft()
            request.wait()
            free.append(request)
            return [np.array(request.get_tensor(port).data) for port in ports]

        try:
            for feeds in batches:
                if not free:
                    yield finish()
                request = free.pop()
                request.start_async(feeds)
                flight.append(request)
            while flight:
                yield finish()
        finally:
            for request in flight:  # a consumer that stopped early: let running requests end
                request.wait()


def create_openvino_session(
    xml: bytes, weights: bytes, *, threads: int | None, hint: str = "THROUGHPUT"
) -> OpenVINOSession:
    """Compile a verified IR for this machine's CPU.

    Raises:
        ImportError: OpenVINO is not installed.
        BundleError: OpenVINO cannot read or compile the IR.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError(f'backend="openvino" needs OpenVINO: pip install ".[openvino]" ({exc})') from exc
    if threads is not None and threads < 1:
        raise InputError(f"threads must be a positive integer, not {threads!r}")
    core = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        model = core.read_model(
            model=xml.decode("utf-8"), weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy())
        )
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:  # OpenVINO raises its own untyped exceptions
        raise BundleError(f"OpenVINO could not load the bundle's IR ({exc}); re-export with --openvino") from exc
    return OpenVINOSession(compiled)
