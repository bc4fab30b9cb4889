"""The one place logging is configured: structlog events, JSON lines for journald, console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and route the stdlib loggers (httpx, websockets, uvicorn) through it.

    ``fmt``: "json" (one JSON object per line, what journald stores), "console" (coloured,
    aligned, for people), "auto" (console when ``stream`` is a TTY).
    """
    stream = sys.stdout if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
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
