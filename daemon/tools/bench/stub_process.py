"""The stand-in services in a process of their own, for measurements.

In the benchmark's own process they would share the daemon's event loop: a millisecond the daemon
spends on its VAD would delay the stand-in's answer, and the stand-in's JSON the daemon's next
step, which is not what happens when the services run on another machine. A child process
(``spawn``: a clean interpreter, no copy of this event loop) runs them; a pipe brings back their
URLs and, on request, their records. ``time.monotonic()`` is the same clock in both processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from daemon.tools.stubs.funasr_behaviour import FunAsrBehaviour
from daemon.tools.stubs.openai import OpenAiBehaviour
from daemon.tools.stubs.openai_behaviour import ReceivedRequest, content_text
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour

START_TIMEOUT_S = 60.0
"""Spawning an interpreter and warming the ASR stand-in's recogniser up take a few seconds."""
REPLY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class StubProcessError(Exception):
    """The stand-ins' process did not start or did not answer: the message says why."""


@dataclass(frozen=True)
class StubBehaviours:
    """What the child starts (pickled across): the three behaviours, the TTS protocol."""

    asr: FunAsrBehaviour | None
    llm: OpenAiBehaviour | None
    tts: PaddleSpeechBehaviour | None
    tts_protocol: str


@dataclass(frozen=True)
class StubUrls:
    asr: str
    llm: str
    tts: str
    control: str = ""
    """``POST /_stub/misbehave`` (daemon/tools/stubs/switch.py): another process flips a stand-in."""


@dataclass(frozen=True)
class LlmRequest:
    """A chat request the LLM stand-in received: when (``time.monotonic()``) and its last user message."""

    at: float
    question: str


class StubProcess:
    """``async with StubProcess(asr=..., llm=..., tts=...) as stubs``: ``stubs.urls``,
    ``await stubs.synth_log()`` (the TTS stand-in's ``(sentence, seconds)`` records so far) and
    ``await stubs.disconnect_times()`` (when the LLM and TTS stand-ins saw a client go away),
    ``await stubs.llm_requests()`` (the chat requests the LLM stand-in received),
    ``await stubs.misbehave("llm", "cut")`` (None: behave again; see daemon/tools/stubs/switch.py)."""

    def __init__(
        self,
        *,
        asr: FunAsrBehaviour | None = None,
        llm: OpenAiBehaviour | None = None,
        tts: PaddleSpeechBehaviour | None = None,
        tts_protocol: str = "http",
    ) -> None:
        self._behaviours = StubBehaviours(asr, llm, tts, tts_protocol)
        self._conn: Connection | None = None
        self._process: Any = None
        self._lock = asyncio.Lock()
        self.urls = StubUrls("", "", "")

    async def __aenter__(self) -> StubProcess:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._conn = parent
        self._process = context.Process(
            target=_child_main, args=(child, self._behaviours), name="moss-voice-stubs", daemon=True
        )
        self._process.start()
        child.close()
        try:
            kind, payload = await self._receive(START_TIMEOUT_S)
        except BaseException:
            await self._stop()
            raise
        if kind != "ready":
            await self._stop()
            raise StubProcessError(f"the stand-ins did not start: {payload}")
        self.urls = StubUrls(*payload)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    @property
    def exitcode(self) -> int | None:
        """The child's exit status once it has ended (None while it runs)."""
        return None if self._process is None else self._process.exitcode

    async def synth_log(self) -> list[tuple[str, float]]:
        payload = await self._ask("synth_log")
        return [(str(sentence), float(seconds)) for sentence, seconds in payload]

    async def llm_requests(self) -> list[LlmRequest]:
        """Every chat request the LLM stand-in received so far, in order."""
        payload = await self._ask("llm_requests")
        return [LlmRequest(float(at), str(question)) for at, question in payload]

    async def disconnect_times(self) -> tuple[list[float], list[float]]:
        """When the LLM and the TTS stand-ins saw a client go away mid-stream, on ``time.monotonic()``."""
        llm, tts = await self._ask("disconnect_times")
        return [float(t) for t in llm], [float(t) for t in tts]

    async def misbehave(self, service: str, misbehave: str | None) -> dict[str, str | None]:
        """Make one stand-in misbehave (or behave: None); what each one does now. Raises
        StubProcessError naming an unknown service or misbehaviour."""
        result: dict[str, str | None] = await self._ask("misbehave", (service, misbehave))
        return result

    async def _ask(self, command: str, argument: Any = None) -> Any:
        async with self._lock:
            assert self._conn is not None
            self._conn.send(command if argument is None else (command, argument))
            kind, payload = await self._receive(REPLY_TIMEOUT_S)
        if kind != command:
            raise StubProcessError(f"the stand-ins answered {kind!r} to {command}: {payload}")
        return payload

    async def _receive(self, timeout: float) -> tuple[str, Any]:
        conn = self._conn
        assert conn is not None
        ready = await asyncio.to_thread(conn.poll, timeout)
        if not ready:
            raise StubProcessError(f"the stand-ins' process did not answer within {timeout:.0f} s")
        try:
            kind, payload = conn.recv()
        except EOFError as exc:
            raise StubProcessError(f"the stand-ins' process ended (exit code {self._process.exitcode})") from exc
        return str(kind), payload

    async def _stop(self) -> None:
        conn, process, self._conn = self._conn, self._process, None
        if conn is not None:
            with suppress(OSError):  # BrokenPipeError: it already ended
                conn.send("stop")
            conn.close()
        if process is not None:
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, STOP_TIMEOUT_S)


def _child_main(conn: Connection, behaviours: StubBehaviours) -> None:
    from daemon.logs import configure_logging

    configure_logging("warning", "console", stream=sys.stderr)
    asyncio.run(_serve(conn, behaviours))


async def _serve(conn: Connection, b: StubBehaviours) -> None:
    from daemon.tools.stubs.runner import start_stubs
    from daemon.tools.stubs.switch import StubSwitch, SwitchServer

    async with AsyncExitStack() as stack:
        try:
            asr_stub, llm_stub, tts_stub = await start_stubs(
                stack, asr=b.asr, llm=b.llm, tts=b.tts, tts_protocol=b.tts_protocol
            )
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        switch = StubSwitch(asr_stub, llm_stub, tts_stub)
        control = await stack.enter_async_context(SwitchServer(switch))
        conn.send(("ready", (asr_stub.url, llm_stub.url, tts_stub.url, control.url)))
        while True:
            try:
                command = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):  # the parent is gone
                return
            if isinstance(command, tuple) and command[0] == "misbehave":
                try:
                    await switch.set(*command[1])
                except ValueError as exc:
                    conn.send(("error", str(exc)))
                else:
                    conn.send(("misbehave", switch.current()))
            elif command == "synth_log":
                conn.send(("synth_log", list(tts_stub.synth_log)))
            elif command == "llm_requests":
                conn.send(
                    (
                        "llm_requests",
                        [_chat_request(r) for r in llm_stub.requests if r.path.endswith("/chat/completions")],
                    )
                )
            elif command == "disconnect_times":
                conn.send(("disconnect_times", (list(llm_stub.disconnect_times), list(tts_stub.disconnect_times))))
            elif command == "stop":
                return
            else:
                conn.send(("error", f"unknown command {command!r}"))


def _chat_request(request: ReceivedRequest) -> tuple[float, str]:
    """(arrival, last user message) of a request (plain values: they cross the pipe)."""
    question = ""
    body = request.body
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        for message in reversed(body["messages"]):
            if isinstance(message, dict) and message.get("role") == "user":
                question = content_text(message.get("content"))
                break
    return request.at, question
