"""The micro-batcher: a bounded queue of checked requests and one fair inference thread.

Requests arrive already checked and encoded (:class:`flare_onnx.engine.Request`) and are cut
into slices of at most ``slice_tokens`` tokens (512 by default). The inference thread works in
rounds. **The fairness rule:** a round takes *one* slice from each waiting request, oldest
first, among those with the first one's task and options (up to ``max_batch_texts`` texts, after
at most ``max_wait_ms`` for company), merges them into one engine call, and a request with
slices left goes to the back of the line. So a request waits for at most one slice of each
request ahead of it per round — a large in-limit request costs its own latency, not everyone's.
A request is answered when its last slice is done. The event loop never runs inference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
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
    slices: deque[Request] = field(default_factory=deque)
    results: list[Any] = field(default_factory=list)

    def joins(self, first: _Job) -> bool:
        return self.request.spec.name == first.request.spec.name and self.request.options == first.request.options


class MicroBatcher:
    """A bounded queue and one inference thread that serves waiting requests in fair rounds."""

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
        job = _Job(request, fut, loop, time.monotonic(), deque(request.slices(self.cfg.slice_tokens)))
        with self._cond:
            if self._stop:
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
            if self._queued_texts + n > self.cfg.queue_size:
                raise HTTPError(503, "the queue is full; retry shortly", {"Retry-After": "1"})
            self._queue.append(job)
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

    def _take(self) -> list[tuple[_Job, Request]] | None:
        """The next round: one slice from each waiting request that joins the oldest one."""
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._queue[0]
            # a short wait lets concurrent requests join the round
            deadline = first.enqueued + self.cfg.max_wait_ms / 1000
            while time.monotonic() < deadline and self._joining(first) < self.cfg.max_batch_texts and not self._stop:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            round_: list[tuple[_Job, Request]] = []
            n = 0
            for job in list(self._queue):
                part = job.slices[0]
                if job.joins(first) and (not round_ or n + len(part.texts) <= self.cfg.max_batch_texts):
                    round_.append((job, job.slices.popleft()))
                    n += len(part.texts)
            for job, _ in round_:  # served this round: done, or to the back of the line
                self._queue.remove(job)
                if job.slices and not job.future.done():
                    self._queue.append(job)
                else:
                    self._queued_texts -= sum(len(s.texts) for s in job.slices)
                    job.slices.clear()
            self._queued_texts -= n
            return round_

    def _drop(self, job: _Job) -> None:
        """A failed request leaves the line with the rest of its slices."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            self._queued_texts -= sum(len(part.texts) for part in job.slices)
            job.slices.clear()

    def _joining(self, first: _Job) -> int:
        return sum(len(j.slices[0].texts) for j in self._queue if j.joins(first))

    def _run(self) -> None:
        while (round_ := self._take()) is not None:
            live = [(job, part) for job, part in round_ if not job.future.done()]  # cancelled or timed out meanwhile
            if not live:
                continue
            started = time.monotonic()
            if self.metrics is not None:
                self.metrics.batch_texts.observe(sum(len(part.texts) for _, part in live))
                for job, _ in live:
                    if not job.results:
                        self.metrics.queue_wait.observe(started - job.enqueued)
            for (job, _), (part, err) in zip(live, self._infer([part for _, part in live])):
                if err is not None:
                    self._drop(job)
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
                    continue
                job.results.extend(part or [])
                if len(job.results) == len(job.request.texts):
                    job.loop.call_soon_threadsafe(_resolve, job.future, job.results, None)
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
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the round
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
