"""``moss-voice stubs``: the three stand-ins in the foreground, on the ports the defaults use."""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack

import structlog

from daemon.tools.stubs.answers import ANSWERS, DEFAULT_ANSWER
from daemon.tools.stubs.funasr import FunAsrBehaviour, FunAsrStub
from daemon.tools.stubs.openai import OpenAiBehaviour, OpenAiStub
from daemon.tools.stubs.paddlespeech import PaddleSpeechBehaviour, PaddleSpeechStub

log = structlog.get_logger()


async def start_stubs(
    stack: AsyncExitStack,
    *,
    host: str = "127.0.0.1",
    asr_port: int = 0,
    llm_port: int = 0,
    tts_port: int = 0,
    asr: FunAsrBehaviour | None = None,
    llm: OpenAiBehaviour | None = None,
    tts: PaddleSpeechBehaviour | None = None,
    tts_protocol: str = "http",
) -> tuple[FunAsrStub, OpenAiStub, PaddleSpeechStub]:
    """Start the three stand-ins; ``stack`` stops them. Port 0 picks a free port."""
    asr_stub = FunAsrStub(host, asr_port, asr or FunAsrBehaviour())
    llm_stub = OpenAiStub(host, llm_port, llm or demo_llm_behaviour())
    tts_stub = PaddleSpeechStub(host, tts_port, tts or PaddleSpeechBehaviour(), protocol=tts_protocol)  # type: ignore[arg-type]
    for stub in (asr_stub, llm_stub, tts_stub):
        await stack.enter_async_context(stub)
    await asr_stub.warm_up()
    return asr_stub, llm_stub, tts_stub


def demo_llm_behaviour(**overrides: object) -> OpenAiBehaviour:
    """Scripted MOSS: answers the demo questions, at a GPU-like pace."""
    settings: dict[str, object] = {
        "answers": dict(ANSWERS),
        "default_answer": DEFAULT_ANSWER,
        "first_token_delay_s": 0.15,
        "tokens_per_s": 40.0,
    }
    settings.update(overrides)
    return OpenAiBehaviour(**settings)  # type: ignore[arg-type]


async def run_stubs(args: argparse.Namespace, stop: asyncio.Event) -> int:
    async with AsyncExitStack() as stack:
        asr, llm, tts = await start_stubs(
            stack,
            host=args.host,
            asr_port=args.asr_port,
            llm_port=args.llm_port,
            tts_port=args.tts_port,
            asr=FunAsrBehaviour(flavour=args.asr_flavour),
            tts_protocol=args.tts_protocol,
        )
        control = None
        if args.control_port >= 0:
            from daemon.tools.stubs.switch import StubSwitch, SwitchServer

            server = SwitchServer(StubSwitch(asr, llm, tts), args.host, args.control_port)
            await stack.enter_async_context(server)
            control = server.url
        log.info("stubs_ready", asr=asr.url, asr_flavour=args.asr_flavour, llm=llm.url, tts=tts.url, misbehave=control)
        await stop.wait()
    return 0
