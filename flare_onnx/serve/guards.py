"""The connection guards: a deadline on every request head, a cap per client address, and a
body that must arrive in time and within its size.

uvicorn only times connections out between requests, after a response, so a client that
opens a connection and sends its head a byte at a time (slowloris) holds it, and a slot of
``limit_concurrency``, for ever. Here the head of each request — the first on a connection,
and each next one on a kept-alive connection — must be complete within ``header_timeout_s``
or the connection is closed; and one client address may hold at most ``max_per_ip``
connections (0: no cap), so one slow client cannot take every slot.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
from collections import Counter
from typing import Any

from .config import HTTPError

__all__ = ["guarded_protocol", "read_body", "HostGuard", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a bind address or a Host name is this machine's loopback, in any spelling:
    ``127.0.0.2``, ``::1``, ``[0:0:0:0:0:0:0:1]``, ``::ffff:127.0.0.1``, ``localhost``."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _host_name(header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8080`` -> ``::1``)."""
    value = header.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    """ASGI middleware answering only to the allowed Host names (a DNS-rebinding page cannot
    reach a loopback service under its own name). ``"loopback"`` in ``allowed`` takes every
    spelling of a loopback address; a request with no Host or with two is refused. Refusals
    are JSON, like every other error of the service."""

    def __init__(self, app: Any, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.loopback = "loopback" in allowed
        self.names = {h.lower() for h in allowed if h != "loopback"}

    def allows(self, name: str) -> bool:
        return name.lower() in self.names or (self.loopback and is_loopback(name))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"]
        if len(hosts) != 1:
            await _refuse(send, f"the request has {len(hosts)} Host headers; send exactly one")
            return
        if not self.allows(_host_name(hosts[0])):
            await _refuse(
                send,
                f"this service does not answer to the Host {hosts[0][:100]!r} "
                f"(serve --allowed-hosts names the ones it does)",
            )
            return
        await self.app(scope, receive, send)


async def _refuse(send: Any, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive_stream: Any, limit: int, timeout_s: float) -> bytes:
    """The request body, refused past ``limit`` bytes (413) or ``timeout_s`` seconds (408)."""
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in receive_stream:
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout=timeout_s)
    except asyncio.TimeoutError as exc:  # a slow body holds a connection and a concurrency slot
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s") from exc
    return b"".join(chunks)


_BUSY_BODY = b"too many connections from this address\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class _Guard:
    """The guard's half of the protocol; mixed in before uvicorn's parser class."""

    header_timeout_s: float = 10.0
    max_per_ip: int = 0
    per_ip: Counter[str]  # open connections by address, shared by one server's connections
    _head_timer: asyncio.TimerHandle | None = None
    _seen_cycle: Any = None
    _ip: str | None = None
    # set by uvicorn's protocol classes
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    client: Any

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if not in_flight and not self.transport.is_closing():
            self.transport.close()

    def _note_head(self) -> None:
        # both parsers start a new request cycle the moment a request head is complete
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle
            self._disarm()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self.client:
            self._ip = str(self.client[0])
            self.per_ip[self._ip] += 1
            if self.max_per_ip and self.per_ip[self._ip] > self.max_per_ip:
                transport.write(_BUSY)
                transport.close()
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._note_head()

    def on_response_complete(self) -> None:
        self._arm()  # the next request's head on a kept-alive connection (before a pipelined one is read)
        super().on_response_complete()  # type: ignore[misc]
        self._note_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._ip is not None:
            self.per_ip[self._ip] -= 1
            if self.per_ip[self._ip] <= 0:
                del self.per_ip[self._ip]
            self._ip = None
        super().connection_lost(exc)  # type: ignore[misc]


def guarded_protocol(header_timeout_s: float, max_per_ip: int, http: str = "auto") -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with the guards."""
    base: type[Any]
    if http == "httptools" or (http == "auto" and importlib.util.find_spec("httptools") is not None):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    settings = {"header_timeout_s": header_timeout_s, "max_per_ip": max_per_ip, "per_ip": Counter()}
    return type("GuardedProtocol", (_Guard, base), settings)
