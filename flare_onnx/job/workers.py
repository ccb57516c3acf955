"""The workers: the model in this process, or a pool of spawned worker processes each with its
own session."""

from __future__ import annotations

import functools
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from ..engine import FlareModel, Outcome, TaskSpec
from .config import JobConfig

__all__ = ["Predictor", "predict_chunk"]


@functools.lru_cache(maxsize=1)
def _worker_model(bundle: str, model_options: tuple[tuple[str, Any], ...]) -> Any:
    """The model of a spawned worker process, loaded by its first chunk (that process ends
    with the pool). Workers are started with "spawn": the Rust tokenizer's thread pool
    deadlocks in a child forked after use, so each process builds its own tokenizer and session."""
    from ..engine import load

    return load(bundle, **dict(model_options))


def predict_chunk(model: FlareModel, task: str, texts: list[str], options: dict[str, Any]) -> list[Outcome]:
    """Results for a chunk; a text the model refuses is isolated by the engine, the rest run."""
    return model.predict_each(task, texts, options) if texts else []


def _worker_chunk(
    bundle: str, model_options: tuple[tuple[str, Any], ...], task: str, texts: list[str], options: dict[str, Any]
) -> list[Outcome]:
    return predict_chunk(_worker_model(bundle, model_options), task, texts, options)


class Predictor:
    """Runs chunks in this process, or in ``workers`` spawned processes."""

    def __init__(self, cfg: JobConfig, spec: TaskSpec) -> None:
        from ..engine import available_cpus

        self.spec, self.options = spec, cfg.options
        model_options = dict(cfg.model_options)
        model_options.setdefault("threads", max(1, available_cpus() // cfg.workers))
        self.pool: ProcessPoolExecutor | None = None
        self.model: Any = None
        if cfg.workers > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
            self.bundle, self.model_options = cfg.bundle, tuple(sorted(model_options.items()))
        else:
            from ..engine import load

            self.model = load(cfg.bundle, **model_options)
        self.in_flight = 2 * cfg.workers if self.pool else 0

    def submit(self, texts: list[str]) -> Future[Any] | list[Outcome]:
        if self.pool is not None:
            return self.pool.submit(_worker_chunk, self.bundle, self.model_options, self.spec.name, texts, self.options)
        return predict_chunk(self.model, self.spec.name, texts, self.options)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
