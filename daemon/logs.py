"""The one place logging is configured: structlog events to the journal's native protocol under
systemd, JSON lines elsewhere, console on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from daemon.journal import JOURNAL_SOCKET, JournalLogger, JournalSink, journal_renderer, under_journal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MAX_FIELD_CHARS = 2000
"""Longest string a log field keeps: a transcript, a reply or a server's error body is cut past it
(a flooding server once made 1.7 MB log lines). Tracebacks are not cut."""


class FieldCap:
    """A structlog processor: any string field (also inside lists and dicts) longer than
    ``max_chars`` is cut there, with a marker saying how long it was."""

    def __init__(self, max_chars: int = MAX_FIELD_CHARS) -> None:
        self.max_chars = max_chars

    def __call__(self, logger: Any, method: str, event: Any) -> Any:
        for key, value in event.items():
            if not (isinstance(key, str) and key.startswith("_")):
                event[key] = self._cut(value, depth=0)
        return event

    def _cut(self, value: Any, *, depth: int) -> Any:
        if isinstance(value, str):
            if len(value) <= self.max_chars:
                return value
            return f"{value[: self.max_chars]}… [cut: {len(value)} chars]"
        if isinstance(value, bytes | bytearray) and len(value) > self.max_chars:
            return f"{bytes(value[: self.max_chars])!r}… [cut: {len(value)} bytes]"
        if depth >= 3:
            return value
        if isinstance(value, dict):
            return {k: self._cut(v, depth=depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._cut(v, depth=depth + 1) for v in value]
        return value


class JournalHandler(logging.Handler):
    """Sends the stdlib loggers' records (httpx, websockets, uvicorn) to the journal sink."""

    def __init__(self, sink: JournalSink, pre_chain: list[structlog.types.Processor]) -> None:
        super().__init__()
        self._sink = sink
        self._pre_chain = pre_chain

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: Any = {"event": record.getMessage(), "_record": record}
            for processor in self._pre_chain:
                event = processor(None, record.levelname.lower(), event)
            event.pop("_record", None)
            event.pop("_from_structlog", None)
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            self._sink.send(event)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
    max_field_chars: int = MAX_FIELD_CHARS,
) -> None:
    """Configure structlog and route the stdlib loggers (httpx, websockets, uvicorn) through it.

    ``fmt``: "journal" (systemd's native protocol to ``journal_socket``, with fields: TURN_ID,
    STATE, EVENT, PRIORITY ...), "json" (one JSON object per line), "console" (coloured, aligned,
    for people), "auto" (journal when ``stream`` is the journal's stream, as ``JOURNAL_STREAM`` in
    ``environ`` says; else console on a TTY, else JSON). In every format, string fields longer
    than ``max_field_chars`` are cut (:class:`FieldCap`).
    """
    stream = sys.stdout if stream is None else stream
    if fmt == "auto":
        if under_journal(os.environ if environ is None else environ, stream):
            fmt = "journal"
        else:
            fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        FieldCap(max_field_chars),
    ]
    if fmt == "journal":
        _configure_journal(level, shared, JournalSink(journal_socket, fallback=stream))
        return
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        # Not cached: a module's logger bound at one configuration would keep its level for the
        # life of the process (tests configure several times). Nothing logs per audio frame.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared], processor=renderer
        )
    )
    _route_stdlib(level, handler)


def _configure_journal(level: str, shared: list[structlog.types.Processor], sink: JournalSink) -> None:
    shared = [*shared, structlog.processors.format_exc_info]  # a traceback as text: journalctl shows it as is
    structlog.configure(
        processors=[*shared, journal_renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_args: JournalLogger(sink),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(level, JournalHandler(sink, [structlog.stdlib.add_logger_name, *shared]))


def _route_stdlib(level: str, handler: logging.Handler) -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # Libraries talk a lot at INFO; their warnings still come through.
    # transitions warns at every machine build that model_override keeps our typed trigger stubs.
    logging.getLogger("transitions.core").setLevel(logging.ERROR)
    for noisy in (
        "transitions.extensions",
        "httpx",
        "httpcore",
        "websockets",
        "uvicorn",
        "uvicorn.access",
        "uvicorn.error",
    ):
        logging.getLogger(noisy).setLevel(max(LEVELS[level], logging.WARNING))
