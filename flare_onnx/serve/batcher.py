"""The micro-batcher: a bounded queue of checked requests and one inference thread.

Requests arrive already checked and encoded (:class:`flare_onnx.engine.Request`). The thread
takes the oldest request and every queued one with the same task and options (up to
``max_batch_texts`` texts, after at most ``max_wait_ms``), merges them into one engine call
(the model sorts it into length batches under its token budget) and answers each request with
its own slice. The event loop never runs inference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..engine import FlareModel, Request, merge_requests
from ..errors import InputError
from .config import HTTPError, ServeConfig
from .metrics import ServiceMetrics

__all__ = ["MicroBatcher"]


@dataclass
class _Job:
    request: Request
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float

    def joins(self, first: _Job) -> bool:
        return self.request.spec.name == first.request.spec.name and self.request.options == first.request.options


class MicroBatcher:
    """A bounded queue and one inference thread that merges compatible requests."""

    def __init__(self, model: FlareModel, cfg: ServeConfig, metrics: ServiceMetrics | None = None) -> None:
        self.model, self.cfg, self.metrics = model, cfg, metrics
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="flare-onnx-inference", daemon=True)
        self.batches = 0
        self._thread.start()

    def submit(self, request: Request) -> asyncio.Future[Any]:
        """Queue a checked request; its future gets the request's results.

        Raises:
            HTTPError: 503 when shutting down or the queue is full.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        n = len(request.texts)
        with self._cond:
            if self._stop:
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
            if self._queued_texts + n > self.cfg.queue_size:
                raise HTTPError(503, "the queue is full; retry shortly", {"Retry-After": "1"})
            self._queue.append(_Job(request, fut, loop, time.monotonic()))
            self._queued_texts += n
            self._cond.notify()
        return fut

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._queue[0]
            # a short wait lets concurrent requests join the batch
            deadline = first.enqueued + self.cfg.max_wait_ms / 1000
            while time.monotonic() < deadline and self._joining(first) < self.cfg.max_batch_texts and not self._stop:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            batch: list[_Job] = []
            rest: deque[_Job] = deque()
            n = 0
            while self._queue:
                job = self._queue.popleft()
                size = len(job.request.texts)
                if job.joins(first) and (not batch or n + size <= self.cfg.max_batch_texts):
                    batch.append(job)
                    n += size
                else:
                    rest.append(job)
            self._queue = rest
            self._queued_texts -= n
            return batch

    def _joining(self, first: _Job) -> int:
        return sum(len(j.request.texts) for j in self._queue if j.joins(first))

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.future.done()]  # cancelled or timed out meanwhile
            if not live:
                continue
            started = time.monotonic()
            if self.metrics is not None:
                self.metrics.batch_texts.observe(sum(len(j.request.texts) for j in live))
                for j in live:
                    self.metrics.queue_wait.observe(started - j.enqueued)
            for job, (part, err) in zip(live, self._infer([j.request for j in live])):
                job.loop.call_soon_threadsafe(_resolve, job.future, part, err)
            self.batches += 1
            if self.metrics is not None:
                self.metrics.inference.observe(time.monotonic() - started)

    def _infer(self, requests: list[Request]) -> list[tuple[list[Any] | None, BaseException | None]]:
        """Each request's results or error; a request the model refuses does not fail the others."""
        try:
            merged = merge_requests(requests)
            return [(part, None) for part in merged.split(self.model.run(merged))]
        except InputError:
            pass  # requests are checked before they queue; kept so that one can never fail the others
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the batch
            return [(None, exc)] * len(requests)
        out: list[tuple[list[Any] | None, BaseException | None]] = []
        for request in requests:
            try:
                out.append((self.model.run(request), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the request
                out.append((None, exc))
        return out


def _resolve(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)
