"""Trace redirects, API requests and consumer batches with OpenTelemetry.

Tracing is off unless ``BOLTLINK_TRACING`` is true; then spans go to an
OTLP/HTTP exporter that the standard ``OTEL_*`` variables configure
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...). Off, the hot
path pays one module attribute read: callers test :data:`active` first,
and :func:`span` hands back a shared no-op context.

A redirect's trace context travels in its click (the ``tp`` field, a W3C
``traceparent``), so the consumer batch that writes the click continues
the redirect's trace and links to every other redirect in the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)

from boltlink.clicks import Click

__all__ = [
    "active",
    "batch_span",
    "configure",
    "current_ids",
    "server_span",
    "shutdown",
    "span",
    "traceparent",
]

#: True once :func:`configure` turned tracing on in this process.
active = False

_tracer: Tracer = trace.NoOpTracer()
_provider: Any = None
_propagator = TraceContextTextMapPropagator()
_NOOP = contextlib.nullcontext()
# A batch span links to this many redirects at most; the rest are counted.
_MAX_LINKS = 64


def configure(role: str, exporter: Any = None) -> None:
    """Turn tracing on for this process, exporting with ``exporter``.

    Without an exporter, spans are batched to OTLP over HTTP as the
    ``OTEL_*`` variables say. A test passes an in-memory exporter, whose
    spans are exported as each one ends.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    global active, _tracer, _provider
    resource = Resource.create({"boltlink.role": role})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "boltlink"}))
    provider = TracerProvider(resource=resource)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("boltlink")
    active = True


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global active, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    active, _tracer, _provider = False, trace.NoOpTracer(), None


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """Return a child span of the current one, or a no-op when tracing is off."""
    if not active:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def server_span(
    name: str, headers: Mapping[str, str], **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """Start a server span, continuing the caller's ``traceparent`` if sent."""
    parent = _propagator.extract(headers) if "traceparent" in headers else None
    return _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    )


def traceparent() -> str:
    """Return the current span's W3C ``traceparent``, or "" when none."""
    if not active:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def current_ids() -> tuple[str, str] | None:
    """Return the current (trace id, span id) in hex, or None."""
    if not active:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@contextlib.contextmanager
def _batch(sink: str, stream: str, clicks: Iterable[list[Click]]) -> Iterator[None]:
    contexts: list[SpanContext] = []
    count = 0
    for entry in clicks:
        for click in entry:
            count += 1
            if click.trace and len(contexts) < _MAX_LINKS:
                context = trace.get_current_span(
                    _propagator.extract({"traceparent": click.trace})
                ).get_span_context()
                if context.is_valid:
                    contexts.append(context)

    # The batch continues the first redirect's trace and links to them all
    # (OpenTelemetry messaging conventions: one span, many producers).
    parent = None
    if contexts:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
    attributes: dict[str, str | int] = {
        "messaging.system": "redis",
        "messaging.destination.name": stream,
        "messaging.consumer.group.name": sink,
        "messaging.batch.message_count": count,
    }
    with _tracer.start_as_current_span(
        f"{sink} batch",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(c) for c in contexts],
        attributes=attributes,
    ):
        yield


def batch_span(
    sink: str, stream: str, clicks: Iterable[list[Click]]
) -> contextlib.AbstractContextManager[Any]:
    """Return the span of one consumer batch (``clicks`` is read only if on)."""
    if not active:
        return _NOOP
    return _batch(sink, stream, clicks)
