"""The service's settings, and the error a handler raises to answer with a status."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Limits

__all__ = ["ServeConfig", "HTTPError", "LOOPBACK_HOSTS", "api_key_from_env"]


@dataclass(frozen=True)
class ServeConfig:
    """How ``flare-onnx serve`` runs: request limits, batching, timeouts and the door.

    Frozen: :func:`~flare_onnx.serve.serve` never changes its caller's object (it makes a
    new one with :func:`dataclasses.replace`, for example to take the key from the
    environment).
    """

    max_body_bytes: int = 1_000_000
    #: what one request may ask of the model (texts, characters, tokens, window work,
    #: fill-mask candidates): the engine's one :class:`~flare_onnx.engine.Limits`
    limits: Limits = Limits.SERVICE
    queue_size: int = 256  # texts waiting, across requests
    max_batch_texts: int = 64
    # a request is served in slices of about this much of its model's time, one slice per
    # request per round: the longest a small request waits behind a large one is about one
    # slice. Turned into tokens from each model's measured speed: the former fixed 512 tokens
    # were ~26 ms at 19,000 tokens/s (VNNI EPYC), ~60 ms at 8,500 (AVX2-only EPYC)
    slice_ms: float = 25.0
    slice_tokens: int | None = None  # a fixed token count instead of slice_ms
    # inference threads, each running one engine call at a time; serve() gives each model
    # threads // lanes onnxruntime threads, so the CPU budget stays the same. None: serve()
    # takes 2 for several models on 2 CPUs or more (a long text of one model then holds one
    # lane, not the whole service), 1 otherwise (a lone request gets every CPU)
    lanes: int | None = None
    max_wait_ms: float = 5.0
    deadline_s: float = 30.0
    api_key: str | None = None
    max_connections: int = 512  # open connections before uvicorn answers 503
    http: str = "auto"  # uvicorn's HTTP parser: "httptools" (C, where installed), "h11", or "auto"
    loop: str = "auto"  # event loop: "uvloop" (where installed), "asyncio", or "auto"
    max_connections_per_ip: int = 128  # open connections from one client address (0: no cap, e.g. behind a proxy)
    header_timeout_s: float = 10.0  # a request head (line and headers) must arrive within this
    body_timeout_s: float = 10.0  # and its body within this, once the head is in
    reference_fp32: bool = False  # also serve the bundle's FP32 graph at /v1/reference/... (the page compares)
    # Host header names the service answers (a DNS-rebinding page cannot reach a loopback
    # service under its own name); "loopback" stands for every loopback address and spelling;
    # None: every name. serve() sets LOOPBACK_HOSTS for a loopback bind when none are given.
    allowed_hosts: tuple[str, ...] | None = None


#: the names a loopback service answers to: every spelling of a loopback address
LOOPBACK_HOSTS = ("loopback",)


def api_key_from_env(value: str | None) -> str | None:
    """The key from ``$FLARE_ONNX_API_KEY``, without the surrounding white space a shell or a
    secrets file adds (``$'sekret\\n'`` would otherwise lock everyone out)."""
    key = (value or "").strip()
    return key or None


class HTTPError(Exception):
    """An answer other than 200, raised by a handler: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
