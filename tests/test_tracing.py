"""Tracing: real gateways (subprocesses) export to a real OTLP/HTTP receiver on loopback, whose
protobuf exports are decoded here; real subscribers check what they are sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import standardwebhooks
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from app import tracing
from app.store.client import open_store
from app.store.schema import Delivery, Entry, Keys
from tests.conftest import AUTH, CONFIG_TOML, Gateway, notification
from tests.relaying import SECRET, subscription
from tests.subscribers import Reply, Sink

SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's SpanKind values
TRACE, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"
HOOK = "POST /hooks/vtex"


@dataclass(frozen=True)
class Span:
    trace: str
    span: str
    parent: str
    name: str
    kind: int
    attributes: dict[str, Any]
    service: str
    error: bool


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                spans.append(
                    Span(
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        s.name,
                        s.kind,
                        {a.key: _value(a.value) for a in s.attributes},
                        resource.get("service.name", ""),
                        s.status.code == 2,
                    )
                )
    return spans


class Receiver:
    """An OTLP/HTTP collector: POST /v1/traces, protobuf; or one that hangs on every export."""

    def __init__(self, hang: bool = False) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.posts += 1
                if hang:
                    receiver.release.wait(60)
                    return
                assert self.path == "/v1/traces"
                with receiver.lock:
                    receiver.spans += decode(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, what: str, done: Callable[[list[Span]], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if done(spans):
                return
            assert time.monotonic() < deadline, f"{what}: got {spans}"
            time.sleep(0.05)

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def otel_env(redis_url: str, endpoint: str, service: str = "orderhook-test") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {
        **env,
        "REDIS_URL": redis_url,
        "ORDERHOOK_ADMIN_TOKEN": "admin-token",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": service,
    }


def write_config(tmp_path: Path, keys: Keys, subscriptions: str = "", name: str = "o.toml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG_TOML.replace("{prefix}", keys.prefix) + subscriptions)
    return path


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], Gateway]]:
    gateways: list[Gateway] = []

    def start(config: Path, env: dict[str, str]) -> Gateway:
        gateways.append(Gateway(config, env, tmp_path / f"gateway-{len(gateways)}.log").start())
        return gateways[-1]

    yield start
    for g in gateways:
        g.stop()


def post(gateway: Gateway, order_id: str, **headers: str) -> httpx.Response:
    doc = notification(OrderId=order_id)
    return httpx.post(gateway.url + "/hooks/vtex", json=doc, headers={**AUTH, **headers})


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"time"')]


def context(traceparent: str) -> str:
    """A traceparent without its flags, once its sampled flag is checked."""
    assert int(traceparent[-2:], 16) & 1, traceparent
    return traceparent[:-3]


def one_trace(spans: list[Span]) -> str:
    traces = {s.trace for s in spans}
    assert len(traces) == 1, spans
    return traces.pop()


def test_one_trace_per_event_hook_route_and_every_attempt_retries_included(
    redis_url: str, keys: Keys, tmp_path: Path, receiver: Receiver, started: Any
) -> None:
    with Sink() as sink:
        sink.script("/wms", Reply(500))
        subs = subscription(sink, "wms", retry_schedule="[0.05]") + subscription(
            sink, "erp", transform="""'{"order": orderId}'"""
        )
        gateway = started(write_config(tmp_path, keys, subs), otel_env(redis_url, receiver.url))
        answer = post(gateway, "v1-01")
        assert answer.status_code == 200, answer.text
        sink.wait_for_sync(lambda: len(sink.at("/wms")) == 2 and sink.at("/erp"), 10, "3 posts")
        receiver.wait("5 spans", lambda spans: len(spans) >= 5)

        trace = one_trace(receiver.spans)
        [hook], [route] = receiver.named(HOOK), receiver.named("route")
        delivers = sorted(
            receiver.named("deliver"),
            key=lambda s: (
                s.attributes["orderhook.subscription"],
                s.attributes["orderhook.attempt"],
            ),
        )
        assert (hook.kind, hook.parent, hook.service) == (SERVER, "", "orderhook-test")
        assert hook.attributes["http.response.status_code"] == 200
        assert (route.kind, route.parent) == (INTERNAL, hook.span)
        assert route.attributes["orderhook.event_id"] == answer.json()["id"]
        found = [
            (
                s.attributes["orderhook.subscription"],
                s.attributes["orderhook.attempt"],
                s.attributes["http.response.status_code"],
                s.error,
            )
            for s in delivers
        ]
        assert found == [("erp", 1, 200, False), ("wms", 1, 500, True), ("wms", 2, 200, False)]
        assert all(s.kind == CLIENT and s.parent == route.span for s in delivers)
        assert all(s.attributes["orderhook.duration_ms"] >= 0 for s in delivers)

        # each attempt carries its own span's context, in the header and in the envelope,
        # and the signature covers the body as sent
        sent = {f"00-{trace}-{s.span}" for s in delivers}
        received = sink.at("/wms") + sink.at("/erp")
        assert {context(r.headers["traceparent"]) for r in received} == sent
        for r in received:
            envelope = standardwebhooks.Webhook(SECRET).verify(r.body, r.headers)
            assert envelope["traceparent"] == r.headers["traceparent"]
        assert orjson.loads(sink.at("/erp")[0].body)["data"] == {"order": "v1-01"}

        time.sleep(0.7)  # the outcome lines are flushed every 0.5 s
        lines = log_lines(gateway.log)
        assert {(line["kind"], line["traceId"]) for line in lines} == {
            ("ingest", trace),
            ("delivery", trace),
        }
        assert len(lines) == 4


def test_an_incoming_traceparent_is_honoured_and_a_malformed_or_huge_one_ignored(
    redis_url: str, keys: Keys, tmp_path: Path, receiver: Receiver, started: Any
) -> None:
    gateway = started(write_config(tmp_path, keys), otel_env(redis_url, receiver.url))
    caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    hostile = [
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # an all-zero trace id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-" + "a" * 6000,
        "garbage",
    ]
    assert post(gateway, "v0-01", traceparent=f"00-{caller[0]}-{caller[1]}-01").status_code == 200
    for n, value in enumerate(hostile, 1):
        assert post(gateway, f"v{n}-01", traceparent=value).status_code == 200
    receiver.wait("hook spans", lambda spans: len(spans) == 1 + len(hostile))
    spans = receiver.named(HOOK)
    assert len(spans) == len(receiver.spans)
    honoured = [s for s in spans if s.trace == caller[0]]
    assert [s.parent for s in honoured] == [caller[1]]
    others = [s for s in spans if s not in honoured]
    assert all(s.parent == "" for s in others)  # each the root of a trace of its own
    assert len({s.trace for s in others}) == len(hostile)


def test_entries_without_a_trace_or_with_garbage_still_route_and_deliver_in_a_new_trace(
    redis_url: str, keys: Keys, tmp_path: Path, receiver: Receiver, started: Any
) -> None:
    """As an older gateway (or one with tracing off) wrote them; and a delivery whose stored
    context is garbage when its retry comes."""
    import asyncio

    from app.events import normalize, parse_body, utc_now_iso

    rdb = redis.Redis.from_url(redis_url)
    with Sink() as sink:
        sink.script("/wms", Reply(500))
        subs = subscription(sink, "wms", retry_schedule="[1.5]")
        gateway = started(write_config(tmp_path, keys, subs), otel_env(redis_url, receiver.url))

        async def append() -> None:
            async with open_store(redis_url, keys, 2.0, 60) as store:
                events = [
                    normalize(parse_body(orjson.dumps(notification(OrderId=o))), utc_now_iso())
                    for o in ("old-01", "bad-01")
                ]
                await store.append(events[:1])
                await store.append(events[1:], ["00-not-a-traceparent"])

        asyncio.run(append())
        sink.wait_for_sync(lambda: len(sink.at("/wms")) == 2, 10, "two first attempts")
        # the retry's stored context made garbage meanwhile: the attempt goes on, in a new trace
        pending = lambda: list(rdb.scan_iter(match=keys.delivery("*")))  # noqa: E731
        sink.wait_for_sync(lambda: len(pending()) == 1, 5, "the other delivered")
        [key] = pending()
        rdb.hset(key, Delivery.TRACE, "\x00garbage")
        sink.wait_for_sync(lambda: len(sink.at("/wms")) == 3, 10, "the retry")
        receiver.wait("spans", lambda spans: len(receiver.named("deliver")) == 3)
        assert gateway.proc is not None and gateway.proc.poll() is None
        routes = receiver.named("route")
        assert len(routes) == 2 and all(r.parent == "" for r in routes)  # new roots
        retry = [s for s in receiver.named("deliver") if s.attributes["orderhook.attempt"] == 2]
        assert [s.parent for s in retry] == [""]
        sent = sink.at("/wms")[2].headers["traceparent"]
        assert context(sent) == f"00-{retry[0].trace}-{retry[0].span}"


def test_serve_and_a_separate_worker_make_one_trace(
    redis_url: str, keys: Keys, tmp_path: Path, receiver: Receiver, started: Any
) -> None:
    """The hook is taken by `serve` (no subscription yet: the event waits in the stream), which
    stops; a `worker` with the subscription routes and delivers it later: one trace."""
    with Sink() as sink:
        serve = started(
            write_config(tmp_path, keys), otel_env(redis_url, receiver.url, "orderhook-serve")
        )
        assert post(serve, "v1-01").status_code == 200
        receiver.wait("the hook span", lambda spans: len(spans) == 1)
        assert serve.stop() == 0

        config = write_config(tmp_path, keys, subscription(sink, "wms"), "worker.toml")
        env = otel_env(redis_url, receiver.url, "orderhook-worker")
        command = [sys.executable, "-m", "app.cli", "worker", "--config", str(config)]
        with (tmp_path / "worker.log").open("ab") as out:
            worker = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        try:
            sink.wait_for_sync(lambda: len(sink.at("/wms")) == 1, 20, "the delivery")
            receiver.wait("3 spans", lambda spans: len(spans) == 3)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
    trace = one_trace(receiver.spans)
    [hook], [route], [deliver] = (receiver.named(n) for n in (HOOK, "route", "deliver"))
    assert (hook.service, route.service, deliver.service) == (
        "orderhook-serve",
        "orderhook-worker",
        "orderhook-worker",
    )
    assert (route.parent, deliver.parent) == (hook.span, route.span)
    assert context(sink.at("/wms")[0].headers["traceparent"]) == f"00-{trace}-{deliver.span}"


@pytest.mark.parametrize("collector", ["hangs", "refuses"])
def test_a_collector_that_hangs_or_refuses_never_holds_up_hooks_deliveries_or_shutdown(
    redis_url: str, keys: Keys, tmp_path: Path, started: Any, collector: str
) -> None:
    dead = Receiver(hang=True)
    endpoint = dead.url
    if collector == "refuses":
        dead.close()  # nothing listens there any more
    try:
        with Sink() as sink:
            env = otel_env(redis_url, endpoint) | {
                "OTEL_BSP_MAX_QUEUE_SIZE": "64",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
            }
            config = write_config(tmp_path, keys, subscription(sink, "wms"))
            gateway = started(config, env)
            took = []
            with httpx.Client() as client:
                for n in range(300):
                    begun = time.monotonic()
                    r = client.post(
                        gateway.url + "/hooks/vtex",
                        json=notification(OrderId=f"v{n}-01"),
                        headers=AUTH,
                    )
                    took.append(time.monotonic() - begun)
                    assert r.status_code == 200, r.text
            sink.wait_for_sync(lambda: len(sink.at("/wms")) == 300, 30, "every delivery")
            assert sorted(took)[int(len(took) * 0.99)] < 0.5  # the noisy machine's bound
            if collector == "hangs":
                assert dead.posts >= 1  # it was reached, and held the export
            begun = time.monotonic()
            assert gateway.stop() == 0
            assert time.monotonic() - begun < tracing.SHUTDOWN_S + 10
            assert "Traceback" not in gateway.log.read_text()
    finally:
        if collector == "hangs":
            dead.close()


@pytest.mark.anyio
async def test_with_tracing_off_nothing_is_stored_nor_sent(
    gateway: Any, sink: Sink, rdb: redis.Redis, keys: Keys
) -> None:
    assert not tracing.on
    async with gateway(subscription(sink, "wms")) as client:
        r = await client.post(
            "/hooks/vtex",
            json=notification(),
            headers={
                **AUTH,
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
        assert r.status_code == 200
        [received] = await sink.wait_for("/wms", 1)
    assert "traceparent" not in received.headers
    assert "traceparent" not in orjson.loads(received.body)
    assert all(Entry.TRACE.encode() not in f for _, f in rdb.xrange(keys.ingest_stream))
    deliveries = list(rdb.scan_iter(match=keys.delivery("*")))
    assert all(not rdb.hexists(k, Delivery.TRACE) for k in deliveries)


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "orderhook"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_environment_asks(
    env: dict[str, str], wanted: bool
) -> None:
    assert tracing.wanted(env) is wanted


@pytest.mark.parametrize(
    ("value", "trace_id"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0af7651916cd43dd8448eb211c80319c",
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "0af7651916cd43dd8448eb211c80319c",
        ),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ", None),
        ("", None),
        ("00-" + "1" * 100_000, None),
    ],
)
def test_a_traceparent_is_read_strictly(value: str, trace_id: str | None) -> None:
    assert tracing.trace_id(value) == trace_id
