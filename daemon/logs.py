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
) -> None:
    """Configure structlog and route the stdlib loggers (httpx, websockets, uvicorn) through it.

    ``fmt``: "journal" (systemd's native protocol to ``journal_socket``, with fields: TURN_ID,
    STATE, EVENT, PRIORITY ...), "json" (one JSON object per line), "console" (coloured, aligned,
    for people), "auto" (journal when ``stream`` is the journal's stream, as ``JOURNAL_STREAM`` in
    ``environ`` says; else console on a TTY, else JSON).
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
