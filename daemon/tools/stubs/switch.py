"""Telling running stand-ins to misbehave: ``StubSwitch`` (in the stand-ins' own process) and
``switch_app``, the small HTTP route that lets another process flip it at run time:

    POST /_stub/misbehave  {"service": "llm", "misbehave": "cut"}   -> 200 {"asr": null, "llm": "cut", "tts": null}
    POST /_stub/misbehave  {"service": "llm", "misbehave": null}    -> behave again
    GET  /_stub/misbehave                                            -> what each one does now

It listens on a port of its own (``moss-voice stubs --control-port``), not on the stand-ins' ports,
so that it still answers while a stand-in is ``down``. Besides each stand-in's own misbehaviours
(``*_behaviour.py``), every service takes ``down``: nothing listens on its port, the connection is
refused (the LLM stand-in's ``refuse``; the others stop their server and start it again, on the
same port, when told to behave).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.tools.stubs.funasr import FunAsrStub
from daemon.tools.stubs.funasr_behaviour import MISBEHAVIOURS as ASR_MISBEHAVIOURS
from daemon.tools.stubs.lifecycle import StartStop
from daemon.tools.stubs.openai import OpenAiStub
from daemon.tools.stubs.openai_behaviour import MISBEHAVIOURS as LLM_MISBEHAVIOURS
from daemon.tools.stubs.paddlespeech import PaddleSpeechStub
from daemon.tools.stubs.paddlespeech_behaviour import MISBEHAVIOURS as TTS_MISBEHAVIOURS
from daemon.tools.stubs.serving import InLoopServer, bind_socket, serve

log = structlog.get_logger()

SERVICES = ("asr", "llm", "tts")
DOWN = "down"
PATH = "/_stub/misbehave"


def misbehaviours(service: str) -> tuple[str, ...]:
    """What ``service``'s stand-in can be told to do (``down`` included)."""
    own = {"asr": ASR_MISBEHAVIOURS, "llm": LLM_MISBEHAVIOURS, "tts": TTS_MISBEHAVIOURS}[service]
    return (DOWN, *(m for m in own if m is not None))


class StubSwitch:
    """Flips the misbehaviour of three running stand-ins. Not thread-safe: their event loop only."""

    def __init__(self, asr: FunAsrStub, llm: OpenAiStub, tts: PaddleSpeechStub) -> None:
        self.asr, self.llm, self.tts = asr, llm, tts
        self._down: set[str] = set()

    def current(self) -> dict[str, str | None]:
        return {
            "asr": DOWN if "asr" in self._down else self.asr.behaviour.misbehave,
            "llm": DOWN if "llm" in self._down else self.llm.behaviour.misbehave,
            "tts": DOWN if "tts" in self._down else self.tts.behaviour.misbehave,
        }

    async def set(self, service: str, misbehave: str | None) -> None:
        """``misbehave`` None: behave. Raises ValueError naming an unknown service or misbehaviour."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
        if misbehave is not None and misbehave not in misbehaviours(service):
            raise ValueError(
                f"{service} cannot {misbehave!r}; expected null or one of {', '.join(misbehaviours(service))}"
            )
        if service == "llm":
            wanted = "refuse" if misbehave == DOWN else misbehave
            await self.llm.set_behaviour(dataclasses.replace(self.llm.behaviour, misbehave=wanted))
            (self._down.add if misbehave == DOWN else self._down.discard)(service)
        else:
            stub: FunAsrStub | PaddleSpeechStub = self.asr if service == "asr" else self.tts
            if misbehave == DOWN:
                if service not in self._down:
                    await stub.stop()
                    self._down.add(service)
            else:
                stub.behaviour = dataclasses.replace(stub.behaviour, misbehave=misbehave)  # type: ignore[arg-type]
                if service in self._down:
                    await stub.start()
                    self._down.discard(service)
        log.info("stub_misbehaviour_set", service=service, misbehave=misbehave)


def switch_app(switch: StubSwitch) -> Starlette:
    """``GET`` and ``POST /_stub/misbehave`` (see the module's docstring); errors are 400 with a message."""

    async def handle(request: Request) -> Response:
        if request.method == "POST":
            try:
                body: Any = json.loads(await request.body())
                if not isinstance(body, dict) or not isinstance(body.get("misbehave", ""), str | None):
                    raise ValueError('expected {"service": "asr|llm|tts", "misbehave": "NAME" or null}')
                await switch.set(str(body.get("service")), body.get("misbehave"))
            except ValueError as exc:  # json.JSONDecodeError is one
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(switch.current())

    return Starlette(routes=[Route(PATH, handle, methods=["GET", "POST"])])


class SwitchServer(StartStop):
    """``switch_app`` on ``host:port`` (0: a free port), in the caller's event loop."""

    def __init__(self, switch: StubSwitch, host: str = "127.0.0.1", port: int = 0) -> None:
        self.switch, self.host, self.port = switch, host, port
        self._server: InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            switch_app(self.switch), lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1
        )
        try:
            self._server, self._task = await serve(config, sock, name="stub-switch", timeout=10.0)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is not None and task is not None:
            server.should_exit = True
            await asyncio.wait_for(task, 10.0)
