"""OpenTelemetry tracing: one trace per event, from the hook request to every delivery attempt.

On when the standard environment says so (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, `OTEL_SDK_DISABLED` not true, `OTEL_TRACES_EXPORTER`
not `none`): spans go over OTLP/HTTP (protobuf) through the SDK's batch processor, whose queue
is bounded (`OTEL_BSP_MAX_QUEUE_SIZE`): a collector that is down or hangs costs dropped spans,
never a wait on the hook or a delivery. The SDK reads `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER` and the exporter's own
variables itself.

Off (the default), `on` is False: the hot paths check that one attribute and make no OTel call;
the SDK is not even imported.

The trace context crosses processes and days as a W3C `traceparent` stored beside the event
(the ingest stream entry's and the delivery hash's `tp` field, app/store/schema.py): each
attempt's span is a child of it, however late and wherever it runs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("orderhook.tracing")

Kind = Literal["server", "client", "internal"]

on = False  # the one check the hot paths make
_tracer: Tracer | None = None
_provider: TracerProvider | None = None

SHUTDOWN_S = 5.0  # at exit, the last spans get this long to reach the collector
MAX_TRACEPARENT = 256  # a longer header is not looked at
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; version ff is invalid.
_TRACEPARENT = re.compile(r"\A([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (the standard variables, as the SDK reads them)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in _ENDPOINTS)


_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def setup(env: Mapping[str, str] = os.environ) -> bool:
    """Start exporting in this process if the environment asks (once; `shutdown` at exit)."""
    global on, _tracer, _provider
    if on or not wanted(env):
        return on
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "orderhook"}))
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("orderhook")
    # A full queue (a collector down) drops spans; the SDK would log each one dropped.
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
    on = True
    log.info("tracing on: spans exported over OTLP/HTTP")
    return on


def shutdown() -> None:
    """Send what is queued and stop, waiting at most SHUTDOWN_S (a collector may hang)."""
    global on, _tracer, _provider
    provider, _provider, _tracer, on = _provider, None, None, False
    if provider is not None:
        done = threading.Thread(target=provider.shutdown, name="orderhook-tracing", daemon=True)
        done.start()
        done.join(SHUTDOWN_S)


def parse(traceparent: str) -> tuple[int, int, int] | None:
    """A W3C traceparent's (trace id, span id, flags), or None for anything not a valid one."""
    match = _TRACEPARENT.match(traceparent) if len(traceparent) <= MAX_TRACEPARENT else None
    if match is None:
        return None
    version, trace, span, flags = match.groups()
    if version == "ff" or trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return int(trace, 16), int(span, 16), int(flags, 16)


def trace_id(traceparent: str) -> str | None:
    """The trace id (32 hex digits) of a valid traceparent, for the log lines."""
    return traceparent[3:35] if parse(traceparent) is not None else None


def start(
    name: str,
    traceparent: str,
    kind: Kind,
    attributes: Mapping[str, str | int | bool],
) -> Span:
    """A span, child of `traceparent` when it is a valid one (else the root of a new trace)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    if _tracer is None:
        return trace.INVALID_SPAN
    context = None
    parent = parse(traceparent)
    if parent is not None:
        remote = SpanContext(parent[0], parent[1], True, TraceFlags(parent[2]))
        context = trace.set_span_in_context(NonRecordingSpan(remote))
    return _tracer.start_span(name, context, SpanKind[kind.upper()], dict(attributes))


def traceparent_of(span: Span) -> str:
    """The span's context as a W3C traceparent ("" for no valid span)."""
    context = span.get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def failed(span: Span, error: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error[:200])
    span.set_status(Status(StatusCode.ERROR, error[:200]))
