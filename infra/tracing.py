"""OpenTelemetry tracing, off unless the standard `OTEL_*` variables turn it on.

`OTEL_TRACES_EXPORTER=otlp` (OTLP over HTTP/protobuf; `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
... as the specification defines them) or `console` turns tracing on in every Lifeline process; unset, `none` or
`OTEL_SDK_DISABLED=true` leaves it off and costs nothing (the API's no-op tracer). One message is one trace: the
MLLP accept span's context is stored with the message (`messages.trace_context`), the dispatcher starts the delivery
workflow inside it, and the Temporal SDK's TracingInterceptor carries it through the workflow into the activity and
its send. Span attributes hold ids and types (message id, channel, destination, message type, ACK code), never
message content or patient identifiers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger(__name__)
TRACER = "lifeline"
_on = False  # set by setup(); the global provider cannot be unset, so tests switch tracing off with reset()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER) if _on else trace.NoOpTracer()


def configured_exporters() -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` asks for; empty means tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def active() -> bool:
    """Tracing was set up in this process."""
    return _on


def setup(process: str, exporter: Any = None) -> bool:
    """Install the process's tracer provider from the environment (or with `exporter`, for tests); True when on."""
    global _on
    names = configured_exporters()
    if exporter is None and not names:
        return False
    if _on:
        return True
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or "lifeline"
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # set once per process (OpenTelemetry allows no second one)
        provider = current
    else:
        provider = TracerProvider(resource=Resource.create({"service.name": service, "lifeline.process": process}))
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _on = True
    log.info("tracing on (%s) for %s", ", ".join(names) or "test exporter", process)
    return True


def reset() -> None:
    """Switch tracing off again (tests): no more Lifeline or asyncpg spans, no interceptors for new clients."""
    global _on
    if _on:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    _on = False


def client_interceptors() -> list[Any]:
    """Temporal client interceptors: the SDK's TracingInterceptor when tracing is on (clients and their workers)."""
    if not active():
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer())]


def instrument_app(app: Any) -> None:
    if active():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics,api/events")


def current_context() -> str | None:
    """The current trace context as stored with a message (W3C traceparent/tracestate JSON), or None."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


@contextlib.contextmanager
def continued(stored: str | None) -> Iterator[None]:
    """Run the block inside a trace context stored with a message (nothing changes when there is none)."""
    if not stored:
        yield
        return
    try:
        carrier = json.loads(stored)
    except ValueError:
        yield
        return
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
