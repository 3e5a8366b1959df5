"""OpenTelemetry: one message is one trace, from the MLLP accept to the peer's ACK, across the listener, the store,
the dispatcher (which continues the context stored with the message), the delivery workflow and its activity.

The in-process engine runs with a Temporal client carrying the SDK's TracingInterceptor; spans go to the SDK's
in-memory exporter. Attributes carry ids and types only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from infra import tracing
from infra.crypto import Cipher
from tests.delivery.harness import Engine, Peer, adt, config_for, running, send_mllp, wait_for


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    assert tracing.setup("test", exporter=spans)
    yield spans
    tracing.reset()
    spans.clear()


def tree(spans: list[ReadableSpan], root: ReadableSpan) -> dict[str, Any]:
    """name -> subtree, children keyed by name (a list when a name repeats)."""
    assert root.context is not None
    children = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    return {"name": root.name, "children": [tree(spans, c) for c in sorted(children, key=lambda s: s.start_time or 0)]}


def path(node: dict[str, Any], names: list[str]) -> list[str]:
    """Follow the first child with each name in turn; the names found."""
    found = [node["name"]]
    for name in names:
        nxt = next((c for c in node["children"] if c["name"] == name), None)
        if nxt is None:
            break
        found.append(name)
        node = nxt
    return found


async def test_one_message_is_one_trace_from_accept_to_the_peer_ack(
        exporter: InMemorySpanExporter, pool: asyncpg.Pool, temporal_env: WorkflowEnvironment,
        store_cipher: Cipher, task_queue: str, db_url: str) -> None:
    traced = Client(**{**temporal_env.client.config(), "interceptors": tracing.client_interceptors()})
    assert traced.config()["interceptors"], "tracing on: the client carries the TracingInterceptor"
    peer = Peer()
    engine = Engine(pool, traced, config_for(await peer.start()), store_cipher, task_queue, db_url)
    try:
        async with running(engine):
            assert await send_mllp(engine.mllp_port, [adt("TRACE1", "MRN778899", name="TRACY^PATIENT")]) == ["AA"]
            await wait_for(lambda: peer.control_ids() == ["TRACE1"], timeout=60)

            def finished() -> bool:
                return any(s.name == "mllp.send" for s in exporter.get_finished_spans()) and any(
                    s.name == "RunWorkflow:DeliveryWorkflow" for s in exporter.get_finished_spans())

            await wait_for(finished, timeout=30)
    finally:
        await peer.stop()

    spans = list(exporter.get_finished_spans())
    accept = next(s for s in spans if s.name == "mllp.accept")
    assert accept.kind == SpanKind.SERVER and accept.parent is None
    assert accept.attributes is not None and accept.context is not None
    message_id = accept.attributes["lifeline.message_id"]
    assert accept.attributes["hl7.ack_code"] == "AA" and accept.attributes["lifeline.channel"] == "adt-in"
    stored = await pool.fetchval("select trace_context from messages where id = $1", message_id)
    assert json.loads(stored)["traceparent"].split("-")[1] == format(accept.context.trace_id, "032x")

    trace_spans = [s for s in spans if s.context is not None and s.context.trace_id == accept.context.trace_id]
    t = tree(trace_spans, accept)
    # accept -> the dispatcher's workflow start -> (the workflow run, and) its activity -> the send that got the
    # peer's ACK. The SDK parents workflow-side spans on the start span: a workflow span cannot stay open across
    # replays, so RunWorkflow and StartActivity are siblings.
    chain = ["StartWorkflow:DeliveryWorkflow", "StartActivity:deliver", "RunActivity:deliver", "mllp.send"]
    assert path(t, chain) == ["mllp.accept", *chain], json.dumps(t, indent=1)
    start = next(c for c in t["children"] if c["name"] == "StartWorkflow:DeliveryWorkflow")
    assert "RunWorkflow:DeliveryWorkflow" in [c["name"] for c in start["children"]]
    accept_children = [s for s in trace_spans if s.parent is not None and s.parent.span_id == accept.context.span_id]
    assert any((s.attributes or {}).get("db.system") == "postgresql" for s in accept_children), \
        "the store's insert is a child of the accept (asyncpg instrumentation)"

    send = next(s for s in trace_spans if s.name == "mllp.send")
    assert send.kind == SpanKind.CLIENT and send.attributes is not None
    assert send.attributes["hl7.ack_code"] == "AA" and send.attributes["lifeline.destination"] == "lab"
    assert send.attributes["lifeline.message_id"] == message_id
    assert send.attributes["hl7.message_type"].startswith("ADT^A08")
    assert accept.end_time is not None and send.end_time is not None and send.end_time > accept.end_time

    # Ids and types only: no patient identifier, name or message text in any attribute of the trace.
    for s in trace_spans:
        text = json.dumps({k: str(v) for k, v in (s.attributes or {}).items()})
        for phi in ("MRN778899", "TRACY", "PATIENT", "MSH|", "PID|", "BOSTON"):
            assert phi not in text, (s.name, text)
    statements = [str((s.attributes or {}).get("db.statement", "")) for s in trace_spans]
    assert all("MRN778899" not in q for q in statements)  # parameters are not recorded, only the SQL text


async def test_tracing_is_off_by_default() -> None:
    tracing.reset()
    if "OTEL_TRACES_EXPORTER" not in os.environ:
        assert tracing.configured_exporters() == []
    assert not tracing.active() and tracing.client_interceptors() == []
    with tracing.tracer().start_as_current_span("x") as span:
        assert not span.is_recording()
        assert tracing.current_context() is None  # nothing is stored with a message


def test_standard_otel_variables_turn_on_otlp_export() -> None:
    """In a fresh process: OTEL_TRACES_EXPORTER=otlp + OTEL_EXPORTER_OTLP_ENDPOINT export spans over OTLP/HTTP to
    that endpoint; without them, setup() leaves tracing off."""
    import subprocess
    import sys

    from tests.delivery.harness import HttpPeer

    collector = HttpPeer(lambda hit, n: (200, {"Content-Type": "application/x-protobuf"}, b""))
    port = collector.start()
    script = ("from opentelemetry import trace; from infra import tracing; on = tracing.setup('worker'); "
              "span = tracing.tracer().start_span('probe', attributes={'lifeline.message_id': 'M1'}); span.end(); "
              "trace.get_tracer_provider().force_flush() if on else None; print(on)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    try:
        off = subprocess.run([sys.executable, "-c", script], env=base, capture_output=True, text=True, timeout=60)
        assert off.stdout.strip() == "False", off.stderr
        on = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env={
            **base, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "lifeline-test"})
        assert on.stdout.strip() == "True", on.stderr
        hits = collector.on("/v1/traces")
        assert len(hits) == 1 and hits[0].headers["content-type"] == "application/x-protobuf"
        assert b"probe" in hits[0].body and b"lifeline-test" in hits[0].body
    finally:
        collector.stop()
