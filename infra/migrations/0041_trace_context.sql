-- The OpenTelemetry context of a message's accept (W3C traceparent/tracestate as JSON; null when tracing is off),
-- so the dispatcher's workflow start continues the accept's trace. Ids only: it never holds message content.
alter table messages add column trace_context text;
