"""onnxruntime session creation: thread count, memory settings, and the bytes-only load path."""

from __future__ import annotations

import math
import os
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnxruntime as ort

from ..errors import BundleError, InputError

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from .bundle import VerifiedBundle

__all__ = ["available_cpus", "create_session", "Session", "OrtSession", "Port"]


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max`` or v1 CFS files), if any."""
    try:
        quota_s, period_s = (root / "cpu.max").read_text().split()[:2]
        if quota_s != "max":
            return int(quota_s) / int(period_s)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may actually use: affinity mask, capped by the cgroup quota.

    In a container limited to 1.5 CPUs on a 64-core host this is 2, not 64; onnxruntime's own
    default would start one thread per host core and oversubscribe the quota.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def create_session(
    bundle: VerifiedBundle,
    *,
    threads: int | None = None,
    arena: bool = True,
    spin: bool = False,
    streams: int = 1,
) -> OrtSession:
    """An onnxruntime CPU session for a verified bundle's ONNX graph.

    The graph comes only from :func:`~flare_onnx.engine.bundle.open_bundle`, which checked its
    hash and refused external data. If the exporter already ran onnxruntime's optimizers over
    it (``bundle.graph.optimized``; ``export/optimize.py``), only the ``basic`` level runs here,
    which folds what the stored graph keeps unfolded: ~45 ms less per session.

    Args:
        bundle: the opened bundle; its graph must be an ONNX graph (``backend="onnxruntime"``).
        threads: intra-op threads; ``None`` uses :func:`available_cpus`.
        arena: keep onnxruntime's CPU memory arena (faster; RSS keeps its high-water mark).
        spin: let idle worker threads spin-wait for the next piece of work while a call runs
            (they stop when it returns). Off by default, as everywhere: fastest on a dedicated
            machine, but on a shared one the spinning threads steal CPU from everything else.
        streams: batches run at once, each on ``threads`` threads (:class:`OrtSession`).

    Raises:
        BundleError: onnxruntime cannot load the graph.
        InputError: ``threads`` is not a positive integer.
    """
    if threads is None:
        threads = available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, not {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = levels.ORT_ENABLE_BASIC if bundle.graph.optimized else levels.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    # Shapes change from batch to batch; memory patterns only pay off for repeated shapes.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    # Spin only while a call runs: once the last concurrent run() returns, the workers sleep
    # instead of spinning on, so an idle service takes no CPU between requests.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        session = ort.InferenceSession(bundle.graph_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise BundleError(f"onnxruntime could not load the graph: {exc}") from exc
    # onnxruntime's Python wrapper keeps the serialized model for the session's whole life, only
    # to re-create the session if its providers change (flare-onnx never changes them): a second
    # copy of the graph in memory (17 MB for the reference bundle's INT8 graph). Let go.
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None  # onnxruntime's own attribute: nothing public lets it go
    return OrtSession(session, streams=streams)


class Port(Protocol):
    """A graph input or output as a backend describes it."""

    @property
    def name(self) -> str: ...


class Session(Protocol):
    """What the engine asks of a backend session; the onnxruntime one (:class:`OrtSession`) and
    the OpenVINO one (:class:`~.openvino_session.OpenVINOSession`) both implement it."""

    #: batches the session runs at once (1: one at a time, split over its threads)
    streams: int

    def get_inputs(self) -> Sequence[Port]: ...
    def get_outputs(self) -> Sequence[Port]: ...
    def run_many(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]: ...


class OrtSession:
    """An onnxruntime session behind the engine's :class:`Session` protocol.

    With ``streams`` 1 each batch runs in the caller's thread, split over the session's intra-op
    threads. With ``streams`` > 1 (bulk work, ``workload="bulk"``) a session with one intra-op
    thread runs ``streams`` batches at once, each on one thread. A session with several intra-op
    threads splits every operator of one batch over them and waits for the slowest at each of the
    graph's ~270 operators; beside a busy core that thread sets the pace of all. Independent
    batches, one per thread, do not wait for each other.
    Measured (``python -m benchmarks.bulk``, 2 CPUs, 480 ISDT sentences), against the same graph
    with each batch split over both threads: +17–23% quietly on an AVX-512 VNNI EPYC (beside a
    busy core −14% to +8% over two runs: no steady difference); +4–5% quietly and +16–20%
    beside a busy core on an AVX2 EPYC. One session, so one copy of the weights; activations
    for ``streams`` batches at a time. onnxruntime's ``run`` is safe to call from several
    threads and releases the GIL.
    """

    def __init__(self, session: ort.InferenceSession, streams: int = 1) -> None:
        #: the onnxruntime session itself (its options, providers, profiling)
        self.inner = session
        self.streams = streams
        self._pool: ThreadPoolExecutor | None = None
        if streams > 1:
            from concurrent.futures import ThreadPoolExecutor  # here: bulk work only (logging, ~5 ms to import)

            self._pool = ThreadPoolExecutor(streams, thread_name_prefix="flare-onnx-stream")
            weakref.finalize(self, self._pool.shutdown, wait=False)

    def get_inputs(self) -> Sequence[Port]:
        ports: Sequence[Port] = self.inner.get_inputs()
        return ports

    def get_outputs(self) -> Sequence[Port]:
        ports: Sequence[Port] = self.inner.get_outputs()
        return ports

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs for one batch, in the graph's order."""
        outputs: list[np.ndarray] = self.inner.run(None, feeds)
        return outputs

    def run_many(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """Outputs of each batch, in order; with streams, every stream busy (and one batch queued
        per stream, so a stream that finishes early never waits for the consumer)."""
        if self._pool is None:
            for feeds in batches:
                yield self.run(feeds)
            return
        flight: deque[Future[list[np.ndarray]]] = deque()
        try:
            for feeds in batches:
                if len(flight) >= 2 * self.streams:
                    yield flight.popleft().result()
                flight.append(self._pool.submit(self.run, feeds))
            while flight:
                yield flight.popleft().result()
        finally:  # a consumer that stopped early: drop what has not started, let the rest end
            for future in flight:
                future.cancel()
            for future in flight:
                if not future.cancelled():
                    future.exception()
