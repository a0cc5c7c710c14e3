"""Bounds on what a client may hold without finishing a request: time and connections.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but nothing else: a
connection that never sends a request, sends its headers a byte at a time, or trickles a body
is held for as long as the client likes, each one a file descriptor and, past the headers, a
task. `BoundedHttpProtocol` (uvicorn's httptools protocol) adds, per connection:

- a head timeout: from connecting, or from the previous answer, the next request's headers
  must be in within `header_timeout_s`, else the connection is closed (after a 408 if part of a
  request had arrived); an idle keep-alive connection is closed sooner, by uvicorn;
- a cap on the connections one peer address holds in this process: one more is answered 503
  and closed at once. Behind a proxy every client has the proxy's address: set the cap to 0
  there and let the proxy bound each client (Fly: `[http_service.concurrency]`).

A body's time is bounded in the application, where a 408 is JSON like every other error:
`bounded_receive` for every route, the hook's own `BodyDeadlines` for `POST /hooks/vtex`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, ClassVar

from starlette.types import Message, Receive
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.errors import RequestTimeout

_TOO_MANY = b'{"error":"too many connections from this address"}'
_SLOW_HEAD = b'{"error":"the request headers did not arrive in time"}'


def _answer(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer, for writing before any request is read (then closing)."""
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


TOO_MANY_CONNECTIONS = _answer(b"503 Service Unavailable", _TOO_MANY, b"retry-after: 5\r\n")
HEAD_TIMEOUT = _answer(b"408 Request Timeout", _SLOW_HEAD)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout and a per-address connection cap.

    The bounds are the process's: `configure` sets them from the settings before serving."""

    header_timeout_s: ClassVar[float] = 10.0
    max_per_client: ClassVar[int] = 0
    _per_client: ClassVar[Counter[str]] = Counter()  # open connections by peer address

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.header_timeout_s = settings.header_timeout_s
        cls.max_per_client = settings.max_connections_per_client

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer: str | None = None  # counted against the cap
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        if peer is not None and self.max_per_client:
            if self._per_client[peer] >= self.max_per_client:
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self._per_client[peer] += 1
            self._peer = peer
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._peer is not None:
            self._per_client[self._peer] -= 1
            if not self._per_client[self._peer]:
                del self._per_client[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._head_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # No pipelined request started (uvicorn armed its keep-alive timer): the next head
        # is awaited, within the same bound.
        if self.timeout_keep_alive_task is not None:
            self._await_head()

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_begun = False
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self.transport.write(HEAD_TIMEOUT)
        self.transport.close()


def bounded_receive(receive: Receive, timeout_s: float) -> Receive:
    """`receive`, raising RequestTimeout (408) unless the whole body is in within `timeout_s`
    from now; later calls (the wait for a disconnect) are not bounded."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    body_done = False

    async def receive_in_time() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
        body_done = not message.get("more_body", False)
        return message

    return receive_in_time
