"""A loopback stand-in for a FunASR websocket server, for the demo, the tests and the benchmarks.

It speaks the wire protocol of docs/protocols.md ("FunASR websocket") and emulates each server flavour's quirks
(``is_final`` meaning, ``mode`` labels, silent or mode-less flush replies, the 2026 ``is_end``
acknowledgement). It checks the client the way the real servers do (configuration message
first, a 3-int ``chunk_size`` array, ``is_speaking: true``, constant frame sizes) and records
what it saw in ``stub.sessions`` so tests can assert on the wire.

Recognition uses pocketsphinx restricted to the JSGF grammar ``questions.gram`` (a handful of
English questions), which recognises espeak-ng's ``en-us+klatt4`` voice exactly. Tests that
need other text (Chinese) set ``transcript_override``; scripted conformance tests set ``script``.

This module is the server; the script and the records are in ``funasr_behaviour.py``, one
session's exchange in ``funasr_session.py``, speaking and recognising in ``questions.py``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from http import HTTPStatus
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from daemon.tools.stubs.funasr_behaviour import (
    MISBEHAVIOURS,
    FunAsrBehaviour,
    ScriptStep,
    SessionAborted,
    StubSession,
)
from daemon.tools.stubs.funasr_session import Utterance
from daemon.tools.stubs.lifecycle import StartStop
from daemon.tools.stubs.questions import (
    ESPEAK_SPEED,
    ESPEAK_VOICE,
    GRAMMAR_PATH,
    QUESTIONS,
    Recogniser,
    make_question_wav,
    read_wav_pcm,
    recognise_wav,
)

__all__ = [
    "ESPEAK_SPEED",
    "ESPEAK_VOICE",
    "GRAMMAR_PATH",
    "MISBEHAVIOURS",
    "QUESTIONS",
    "FunAsrBehaviour",
    "FunAsrStub",
    "Recogniser",
    "ScriptStep",
    "StubSession",
    "make_question_wav",
    "read_wav_pcm",
    "recognise_wav",
]

log = structlog.get_logger()

# -- the server -----------------------------------------------------------------------------


class FunAsrStub(StartStop):
    """A FunASR websocket server on loopback. ``url`` is ws://host:port, or wss:// with TLS."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: FunAsrBehaviour | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.behaviour = behaviour if behaviour is not None else FunAsrBehaviour()
        if ssl_context is None and certfile is not None:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(os.fspath(certfile), os.fspath(keyfile) if keyfile else None)
        self._ssl = ssl_context
        self._server: Server | None = None
        self._stopping = asyncio.Event()
        self._idle_recognisers: list[Recogniser] = []
        self.sessions: list[StubSession] = []
        self.handshakes_refused = 0

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl is not None else "ws"
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._stopping.clear()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self._ssl,
            subprotocols=["binary"],  # type: ignore[list-item]
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            ping_interval=None,
            max_size=2**22,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("funasr_stub_started", url=self.url, flavour=self.behaviour.flavour)

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def warm_up(self) -> None:
        """Load one recogniser now, so the first session does not wait for it (~0.1 s)."""
        if not self._idle_recognisers:
            self._idle_recognisers.append(await asyncio.to_thread(Recogniser))

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        misbehave = self.behaviour.misbehave
        if misbehave == "hang":
            await self._stopping.wait()
        if misbehave in ("refuse", "hang"):
            self.handshakes_refused += 1
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable", Headers(), b"refused by stub\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        behaviour = self.behaviour  # one behaviour for the whole session, even if a test swaps it
        session = StubSession(subprotocol=ws.subprotocol)
        self.sessions.append(session)
        recogniser: Recogniser | None = None
        try:
            if behaviour.script is None and behaviour.transcript_override is None:
                recogniser = self._idle_recognisers.pop() if self._idle_recognisers else None
                if recogniser is None:
                    recogniser = await asyncio.to_thread(Recogniser)
            await Utterance(ws, session, behaviour, recogniser).run()
        except (ConnectionClosed, SessionAborted):
            pass
        except Exception:
            log.exception("funasr_stub_failed", url=self.url)
            raise
        finally:
            close = ws.protocol.close_rcvd
            session.client_close_code = close.code if close is not None else None
            if recogniser is not None:
                self._idle_recognisers.append(recogniser)
            session.done.set()
            log.debug("funasr_stub_session_done", frames=session.frames_received, violations=session.violations)


def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Any:
    """Select ``binary`` when offered, and also accept clients that offer nothing (like C++)."""
    return "binary" if "binary" in subprotocols else None
