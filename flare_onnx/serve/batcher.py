"""The micro-batcher: a bounded queue of checked requests and one fair inference thread.

Requests arrive already checked and encoded (:class:`flare_onnx.engine.Request`), each with
the model it was admitted for (a reload swaps what later requests get, never what a queued one
runs on), and are cut into slices. A slice holds about ``slice_ms`` of that model's work on this
machine: the batcher keeps each model's speed in tokens per second (measured when the service
starts, then from every engine call) and turns the time into tokens, so slices are as short in
time on an AVX2-only CPU as on a VNNI one (``slice_tokens`` fixes a token count instead).

There is one inference thread for every model of the service: never more inference than the
CPU budget of one model. It works in rounds. **The fairness rule:** a round takes *one* slice
from each waiting request, oldest first, among those for the first one's model, task and
options (up to ``max_batch_texts`` texts, after at most ``max_wait_ms`` for company), and a
request with slices left goes to the back of the line when its slice is done — behind every
request that arrived meanwhile, for any model. Within a round the cheapest slices run first,
merged into engine calls of at most one slice's budget, and each request is answered as soon
as its last slice is done, so a one-sentence request is not held behind the long slice that
shares its round. The event loop never runs inference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..engine import FlareModel, Request, merge_requests
from ..errors import InputError
from .config import HTTPError, ServeConfig
from .metrics import ServiceMetrics

__all__ = ["MicroBatcher"]

#: the fewest tokens a slice may hold, however slow the model (one short text)
MIN_SLICE_TOKENS = 16
#: how much of a model's speed estimate each engine call replaces
_SPEED_WEIGHT = 0.2


@dataclass
class _Job:
    name: str  # the model's name in the service (metrics)
    model: FlareModel
    request: Request
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    slices: deque[Request] = field(default_factory=deque)
    results: list[Any] = field(default_factory=list)

    def joins(self, first: _Job) -> bool:
        return (
            self.model is first.model
            and self.request.spec.name == first.request.spec.name
            and self.request.options == first.request.options
        )


class MicroBatcher:
    """A bounded queue and one inference thread that serves waiting requests, for every model of
    the service, in fair rounds."""

    def __init__(self, cfg: ServeConfig, metrics: ServiceMetrics | None = None) -> None:
        self.cfg, self.metrics = cfg, metrics
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stop = False
        self._speed: dict[int, float] = {}  # id(model) -> tokens per second
        self._control: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # run between rounds
        self.batches = 0
        # one inference thread per lane; a request has one slice in flight at a time, so with two
        # lanes a long slice holds one lane while the other serves everyone else
        self._threads = [
            threading.Thread(target=self._run, name=f"flare-onnx-inference-{i}", daemon=True)
            for i in range(max(1, cfg.lanes or 1))
        ]
        for thread in self._threads:
            thread.start()

    def measure(self, model: FlareModel, request: Request) -> float:
        """Run ``request`` on ``model`` on the inference thread, between rounds (a model's
        warm-up, at start or before a reload swaps it in: never beside the serving inference),
        and take its speed as the model's first estimate; tokens per second."""

        def timed() -> float:
            started = time.perf_counter()
            model.run(request)
            return request.tokens / max(time.perf_counter() - started, 1e-6)

        done: Future[float] = Future()
        with self._cond:
            if self._stop:
                raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
            self._control.append((timed, done))
            self._cond.notify()
        speed = done.result()
        with self._cond:
            self._speed[id(model)] = speed
        return speed

    def slice_tokens(self, model: FlareModel) -> int:
        """Tokens in one of ``model``'s slices: fixed by ``slice_tokens``, or ``slice_ms`` of its
        measured speed."""
        if self.cfg.slice_tokens is not None:
            return max(MIN_SLICE_TOKENS, self.cfg.slice_tokens)
        speed = self._speed.get(id(model))
        if speed is None:  # not measured: today's fixed size until the first call
            return 512
        return max(MIN_SLICE_TOKENS, int(speed * self.cfg.slice_ms / 1000))

    def submit(self, name: str, model: FlareModel, request: Request) -> asyncio.Future[Any]:
        """Queue a checked request for ``model``; its future gets the request's results.

        Raises:
            HTTPError: 503 when shutting down or the queue is full.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        n = len(request.texts)
        parts = deque(request.slices(self.slice_tokens(model)))
        job = _Job(name, model, request, fut, loop, time.monotonic(), parts)
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
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        with self._cond:
            while self._control:
                self._control.popleft()[1].set_exception(HTTPError(503, "the server is shutting down"))

    def _run_controls(self) -> None:
        while True:
            with self._cond:
                if not self._control:
                    return
                fn, done = self._control.popleft()
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

    def _take(self) -> list[tuple[_Job, Request]] | None:
        """The next round: one slice from each waiting request that joins the oldest one
        (an empty round when only a control call, such as a warm-up, is waiting)."""
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                if self._control:
                    return []
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
            for job, _ in round_:  # out of the line while served (_requeue puts it back)
                self._queue.remove(job)
            self._queued_texts -= n
            return round_

    def _requeue(self, round_: list[tuple[_Job, Request]]) -> None:
        """After a round: a request with slices left goes to the back of the line — behind every
        request that arrived while it was served, so the next round is theirs."""
        with self._cond:
            for job, _ in round_:
                if job.slices and not job.future.done():
                    self._queue.append(job)
                else:
                    self._queued_texts -= sum(len(s.texts) for s in job.slices)
                    job.slices.clear()
            self._cond.notify()

    def _drop(self, job: _Job) -> None:
        """A failed request leaves the line with the rest of its slices."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            self._queued_texts -= sum(len(part.texts) for part in job.slices)
            job.slices.clear()

    def _joining(self, first: _Job) -> int:
        return sum(len(j.slices[0].texts) for j in self._queue if j.joins(first))

    def _calls(self, live: list[tuple[_Job, Request]]) -> list[list[tuple[_Job, Request]]]:
        """A round's slices, cheapest first, merged into engine calls of at most one slice's
        tokens each (a slice over that is a call of its own)."""
        budget = self.slice_tokens(live[0][0].model)
        calls: list[list[tuple[_Job, Request]]] = []
        size = budget + 1
        for job, part in sorted(live, key=lambda jp: jp[1].tokens):
            if size + part.tokens > budget:
                calls.append([])
                size = 0
            calls[-1].append((job, part))
            size += part.tokens
        return calls

    def _run(self) -> None:
        while (round_ := self._take()) is not None:
            self._run_controls()
            live = [(job, part) for job, part in round_ if not job.future.done()]  # cancelled or timed out meanwhile
            if live:
                started = time.monotonic()
                if self.metrics is not None:
                    for job, _ in live:
                        if not job.results:
                            self.metrics.queue_wait.labels(model=job.name).observe(started - job.enqueued)
                for call in self._calls(live):
                    self._serve_call(call)
                self.batches += 1
            self._requeue(round_)

    def _serve_call(self, call: list[tuple[_Job, Request]]) -> None:
        model, name = call[0][0].model, call[0][0].name
        parts = [part for _, part in call]
        started = time.perf_counter()
        answers = self._infer(model, parts)
        elapsed = time.perf_counter() - started
        tokens = sum(part.tokens for part in parts)
        if tokens and elapsed > 0:
            with self._cond:
                old = self._speed.get(id(model))
                now = tokens / elapsed
                self._speed[id(model)] = now if old is None else (1 - _SPEED_WEIGHT) * old + _SPEED_WEIGHT * now
        if self.metrics is not None:
            self.metrics.batch_texts.labels(model=name).observe(sum(len(part.texts) for part in parts))
            self.metrics.inference.labels(model=name).observe(elapsed)
        for (job, _), (part, err) in zip(call, answers):
            if err is not None:
                self._drop(job)
                job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
                continue
            job.results.extend(part or [])
            if len(job.results) == len(job.request.texts):
                job.loop.call_soon_threadsafe(_resolve, job.future, job.results, None)

    @staticmethod
    def _infer(model: FlareModel, requests: list[Request]) -> list[tuple[list[Any] | None, BaseException | None]]:
        """Each request's results or error; a request the model refuses does not fail the others."""
        try:
            merged = merge_requests(requests)
            return [(part, None) for part in merged.split(model.run(merged))]
        except InputError:
            pass  # requests are checked before they queue; kept so that one can never fail the others
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the call
            return [(None, exc)] * len(requests)
        out: list[tuple[list[Any] | None, BaseException | None]] = []
        for request in requests:
            try:
                out.append((model.run(request), None))
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
