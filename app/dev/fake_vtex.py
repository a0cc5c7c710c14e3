"""A fake VTEX, for the tests and for trying the gateway without a VTEX account
(`orderhook dev fake-vtex`), following VTEX's documented contract for the endpoints the gateway
uses: hook configuration (GET, POST, DELETE /api/orders/hook/config; POST pings the hook URL
and saves only on 200), Get Order and Feed v3, with `X-VTEX-API-AppKey` and
`X-VTEX-API-AppToken` required. Each account lives under its own path prefix: base URL
`http://127.0.0.1:PORT/{account}`.

Every request is recorded as it arrived (`requests`: method, raw path, the credentials it
carried), so a second FakeVtex on another port catches any credential sent where it should not
go. Hostile answers on demand: `redirect_to` answers every request with a 302 there, and
`order_bytes` streams a Get Order answer of that many bytes."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("orderhook.fake_vtex")

SAMPLE_ORDER: dict[str, Any] = json.loads(
    (Path(__file__).parent / "sample_order.json").read_text(encoding="utf-8")
)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
APP_KEY = "vtexappkey-mystore-TEST"
APP_TOKEN = "app-token-TEST"
CHUNK = b"x" * (1024 * 1024)


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str  # as sent: percent escapes kept
    query: str
    credentials: tuple[str | None, str | None]  # the app key and token it carried


class Recorder:
    """ASGI middleware: every request recorded before routing; all redirected on demand."""

    def __init__(self, app: ASGIApp, fake: FakeVtex) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.fake.requests.append(
            Seen(
                scope["method"],
                scope["raw_path"].decode("latin-1"),
                scope["query_string"].decode("latin-1"),
                (headers.get("x-vtex-api-appkey"), headers.get("x-vtex-api-apptoken")),
            )
        )
        if self.fake.redirect_to is not None:
            where = self.fake.redirect_to + scope["raw_path"].decode("latin-1")
            return await RedirectResponse(where, 302)(scope, receive, send)
        await self.app(scope, receive, send)


class FakeVtex:
    """Serves on `host`:`port` (0: a free port, known once started) in a thread, as a context
    manager, or in the foreground with `server.run()`."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.host, self.port = host, port
        self.hooks: dict[str, dict[str, Any]] = {}
        self.pings: list[tuple[str, int]] = []  # (url, status the hook URL answered)
        app = Starlette(
            routes=[
                Route(
                    "/{account}/api/orders/hook/config",
                    self.hook_config,
                    methods=["GET", "POST", "DELETE"],
                ),
                Route("/{account}/api/oms/pvt/orders/{order_id}", self.get_order, methods=["GET"]),
                Route("/{account}/api/orders/feed", self.feed, methods=["GET", "POST"]),
            ]
        )
        self.order_failures: list[tuple[int, dict[str, str]]] = []  # answered first, in turn
        self.order_requests: list[tuple[str, float]] = []  # (order id, time.monotonic())
        self.order_values: dict[str, int] = {}  # `value` per order id (default: the sample's)
        self.feed_items: list[dict[str, Any]] = []  # Feed v3: items, handles, visibility
        self.feed_visibility_s = 240.0
        self.requests: list[Seen] = []
        self.redirect_to: str | None = None  # e.g. another FakeVtex's URL
        self.order_bytes: dict[str, tuple[int, bool]] = {}  # order id: (size, Content-Length?)
        config = uvicorn.Config(
            Recorder(app, self), host=host, port=port, log_level="warning", log_config=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.url}/{{account}}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def credentials_received(self) -> list[Seen]:
        return [seen for seen in self.requests if any(seen.credentials)]

    @staticmethod
    def _unauthorized(request: Request) -> Response | None:
        given = (
            request.headers.get("x-vtex-api-appkey"),
            request.headers.get("x-vtex-api-apptoken"),
        )
        if given != (APP_KEY, APP_TOKEN):
            return JSONResponse({"error": {"message": "Unauthorized"}}, 401)
        return None

    async def get_order(self, request: Request) -> Response:
        """Get Order: the sample order under the requested id; 404 for ids starting "gone"."""
        if (refused := self._unauthorized(request)) is not None:
            return refused
        order_id = request.path_params["order_id"]
        self.order_requests.append((order_id, time.monotonic()))
        if self.order_failures:
            status, headers = self.order_failures.pop(0)
            return JSONResponse({"error": {"message": "scripted"}}, status, headers)
        if order_id.startswith("gone"):
            return JSONResponse({"error": {"message": "Order not found"}}, 404)
        if order_id in self.order_bytes:
            return self._huge_order(order_id, *self.order_bytes[order_id])
        order = dict(SAMPLE_ORDER, orderId=order_id)
        order["value"] = self.order_values.get(order_id, order["value"])
        return JSONResponse(order)

    def _huge_order(self, order_id: str, size: int, declared: bool) -> Response:
        """A valid JSON order of `size` bytes (a padding field), streamed 1 MiB at a time."""
        head = json.dumps({"orderId": order_id, "padding": ""})[:-2].encode()
        tail = b'"}'

        async def body() -> AsyncIterator[bytes]:
            yield head
            left = size - len(head) - len(tail)
            while left > 0:
                chunk = CHUNK[: min(left, len(CHUNK))]
                left -= len(chunk)
                yield chunk
            yield tail

        headers = {"Content-Length": str(size)} if declared else {}
        return StreamingResponse(body(), headers=headers, media_type="application/json")

    def add_feed_item(self, **item: Any) -> None:
        self.feed_items.append({"item": item, "handle": None, "visible_at": 0.0})

    async def feed(self, request: Request) -> Response:
        """Feed v3: GET ?maxlot=N (at most 10) hides what it returns; POST commits handles."""
        if (refused := self._unauthorized(request)) is not None:
            return refused
        now = time.monotonic()
        if request.method == "POST":
            handles = set((await request.json()).get("handles", []))
            self.feed_items = [i for i in self.feed_items if i["handle"] not in handles]
            return Response(status_code=204)
        maxlot = int(request.query_params.get("maxlot", "1"))
        if not 1 <= maxlot <= 10:
            return JSONResponse({"error": {"message": "maxlot must be from 1 to 10"}}, 400)
        lot = [i for i in self.feed_items if i["visible_at"] <= now][:maxlot]
        for entry in lot:
            entry["handle"] = secrets.token_urlsafe(16)
            entry["visible_at"] = now + self.feed_visibility_s
        return JSONResponse([{**entry["item"], "handle": entry["handle"]} for entry in lot])

    async def hook_config(self, request: Request) -> Response:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        account = request.path_params["account"]
        if request.method == "GET":
            hook = self.hooks.get(account)
            return JSONResponse(hook) if hook else Response(status_code=404)
        if request.method == "DELETE":
            self.hooks.pop(account, None)
            return Response(status_code=200)
        config = await request.json()
        flt, hook = config.get("filter", {}), config.get("hook", {})
        if flt.get("type") not in ("FromWorkflow", "FromOrders") or not hook.get("url"):
            return JSONResponse({"error": {"message": "filter and hook.url are required"}}, 400)
        async with httpx.AsyncClient(timeout=5) as client:  # VTEX pings before saving
            ping = await client.post(
                hook["url"], json={"hookConfig": "ping"}, headers=hook.get("headers") or {}
            )
        self.pings.append((hook["url"], ping.status_code))
        if ping.status_code != 200:
            log.warning(
                "hook of %s not saved: %s answered %s", account, hook["url"], ping.status_code
            )
            return JSONResponse({"error": {"message": "the hook URL did not answer 200"}}, 400)
        self.hooks[account] = config
        log.info("hook of %s saved: %s answered the ping 200", account, hook["url"])
        return JSONResponse(config)

    def __enter__(self) -> FakeVtex:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake VTEX did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def add_commands(commands: Any) -> None:
    dev = commands.add_parser("dev", help="try the gateway without a VTEX account")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    fake = dev_commands.add_parser(
        "fake-vtex", help="a fake VTEX: hook configuration, Get Order, Feed v3 (until Ctrl-C)"
    )
    fake.add_argument("--host", default=DEFAULT_HOST)
    fake.add_argument("--port", type=int, default=DEFAULT_PORT)


def run(args: argparse.Namespace) -> int:
    """`orderhook dev fake-vtex`: serve in the foreground until SIGTERM or Ctrl-C."""
    fake = FakeVtex(args.host, args.port)
    print(
        f"fake VTEX on {fake.base_url}: set [vtex] base_url to that, "
        f"VTEX_APP_KEY={APP_KEY} and VTEX_APP_TOKEN={APP_TOKEN}",
        flush=True,
    )
    fake.server.run()
    return 0 if fake.server.started else 1
