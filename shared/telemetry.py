"""OpenTelemetry tracing: one provider per process, W3C trace context carried in Kafka headers and message bodies."""

from __future__ import annotations

import sys
from typing import IO

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from shared.settings import CommonSettings

CONSOLE_EXPORT_DELAY_MS = 500
"""Longest a finished span waits before the console exporter writes it (readers of trace files wait at least this)."""


def _one_json_line(span: ReadableSpan) -> str:
    # FastStream records Kafka keys as bytes, which OTLP carries but JSON cannot; without this such spans are dropped.
    attributes = {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in (span.attributes or {}).items()
    }
    printable = ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
    return printable.to_json(indent=None) + "\n"


def setup_tracing(service: str, settings: CommonSettings) -> TracerProvider:
    """Builds the process's tracer provider; the caller shuts it down on exit (flushing queued spans)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"ferry-{service}"}))
    if settings.otel_exporter == "console":
        out: IO[str] = open(settings.otel_console_path, "a", buffering=1) if settings.otel_console_path else sys.stderr
        # Batched in the SDK's export thread, as for OTLP: a span's JSON encoding and write stay off the request's path,
        # and a slow or blocked output drops spans (the queue is bounded) instead of stalling the event loop.
        exporter = ConsoleSpanExporter(out=out, formatter=_one_json_line)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=CONSOLE_EXPORT_DELAY_MS))
    elif settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    return provider


def current_trace_context() -> dict[str, str]:
    """The active span's W3C trace context, ready to put in Kafka headers or a message body."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(carrier: dict[str, str]) -> otel_context.Context:
    """The trace context a carrier (headers or a message's trace_context field) holds."""
    return propagate.extract(carrier)
