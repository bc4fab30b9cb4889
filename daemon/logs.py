"""The one place logging is configured: structlog events to the journal's native protocol under
systemd, JSON lines elsewhere, console on a TTY. Whatever the format, a secret's value never
reaches the output (``redact_secrets``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from daemon.journal import JOURNAL_SOCKET, JournalLogger, JournalSink, journal_renderer, under_journal
from daemon.secrets import known_secrets

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
REDACTED = "[redacted]"
ALWAYS_REDACTED_KEYS = frozenset({"authorization", "proxy-authorization"})
"""Fields (at any depth: headers) whose value is never shown, whatever it is."""


def redact_secrets(secrets: Iterable[str]) -> structlog.types.Processor:
    """A processor that replaces each of ``secrets`` wherever it occurs in an event: in any field,
    nested in lists and tables, inside longer text (``Bearer <key>``, an error message, a
    traceback), in whatever else a field holds as text (an exception object); and the value of
    an ``Authorization`` field, whatever it is. It runs last, after exceptions became text."""
    values = sorted({s for s in secrets if s}, key=len, reverse=True)  # a longer one first: it may hold a shorter

    def scrub_text(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return scrub_text(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, Mapping):
            return {
                scrub(k): REDACTED if str(k).lower() in ALWAYS_REDACTED_KEYS else scrub(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [scrub(v) for v in value]
        if not values:
            return value
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", "replace")
            return scrub_text(text) if any(v in text for v in values) else value
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a field that cannot be shown is not shown
            return f"<{type(value).__name__}>"
        return scrub_text(text) if any(v in text for v in values) else value

    def processor(_logger: Any, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        cleaned: structlog.types.EventDict = {}
        for key, value in event.items():
            if key.lower() in ALWAYS_REDACTED_KEYS:
                cleaned[key] = REDACTED
            elif key.startswith("_"):  # the stdlib's record and structlog's own markers: not rendered
                cleaned[key] = value
            else:
                cleaned[key] = scrub(value)
        return cleaned

    return processor


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
            if not (isinstance(key, str) and (key.startswith("_") or key == "exception")):  # tracebacks whole
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
            if record.exc_info:  # before the chain, which ends with the redaction
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            for processor in self._pre_chain:
                event = processor(None, record.levelname.lower(), event)
            event.pop("_record", None)
            event.pop("_from_structlog", None)
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
    secrets: Iterable[str] | None = None,
    max_field_chars: int = MAX_FIELD_CHARS,
) -> None:
    """Configure structlog and route the stdlib loggers (httpx, websockets, uvicorn) through it.

    ``fmt``: "journal" (systemd's native protocol to ``journal_socket``, with fields: TURN_ID,
    STATE, EVENT, PRIORITY ...), "json" (one JSON object per line), "console" (coloured, aligned,
    for people), "auto" (journal when ``stream`` is the journal's stream, as ``JOURNAL_STREAM`` in
    ``environ`` says; else console on a TTY, else JSON). In every format, string fields longer
    than ``max_field_chars`` are cut (:class:`FieldCap`), after the secrets were redacted.

    ``secrets``: values never to show (``redact_secrets``); None: those of ``environ`` and its
    systemd credentials (``daemon.secrets.known_secrets``).
    """
    stream = sys.stdout if stream is None else stream
    redact = redact_secrets(known_secrets(os.environ if environ is None else environ) if secrets is None else secrets)
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
    cap = FieldCap(max_field_chars)
    if fmt == "journal":
        _configure_journal(level, shared, JournalSink(journal_socket, fallback=stream), [redact, cap])
        return
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        shared.append(structlog.processors.format_exc_info)  # a traceback as text, so that it is redacted too
    # Last before the renderer: everything is text by now. Anything that cuts long fields goes
    # after it: a key cut in two would no longer be recognised (test_secrets holds this).
    shared += [redact, cap]
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


def _configure_journal(
    level: str, shared: list[structlog.types.Processor], sink: JournalSink, last: list[structlog.types.Processor]
) -> None:
    # A traceback as text: journalctl shows it as is; then the redaction and the cut, last.
    shared = [*shared, structlog.processors.format_exc_info, *last]
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
