"""Logs every process of coinstream writes: JSON lines for machines, readable lines on a
terminal, one configuration for its own loggers and its libraries' (FastStream,
aiokafka, uvicorn), through structlog's formatter for the standard library.

Every line carries `service`, `level`, `logger`, `timestamp` (UTC, ISO 8601) and `event`
(the message); a log call about one message adds what identifies it with
`extra=record_fields(...)` (request_id, event_id, topic, partition, offset), which land
as fields of their own. Nothing here reads settings that hold a secret.
"""

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(level: str, service: str, log_format: LogFormat = "auto") -> None:
    """Route every standard-library logger through structlog's formatter at `level`.

    `auto`: human-readable when stderr is a terminal, JSON lines otherwise (a file, a
    pipe, a container's log)."""
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _Service(service),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warnings become log lines too
    for name in _OWN_HANDLERS:  # libraries that print through handlers of their own
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


_OWN_HANDLERS = ("faststream", "faststream.access.kafka")
"""Loggers FastStream gives a coloured handler of its own and stops from propagating."""


def record_fields(
    *,
    request_id: str | None = None,
    event_id: str | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    """The `extra` of a log call about one Kafka message: what identifies it, as fields."""
    fields = {
        "request_id": request_id,
        "event_id": event_id,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }
    return {name: value for name, value in fields.items() if value is not None}


class _Service:
    """Adds the service's name to every line, and drops the coloured copy of the message
    uvicorn passes along (`color_message`)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        event["service"] = self._service
        event.pop("color_message", None)
        return event
