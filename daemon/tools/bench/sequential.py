"""The original deployment's controller, for comparison: one step after the other.

The whole transcript, then the WHOLE LLM answer (the stream read to its end), then the TTS of
the whole answer (every chunk collected), then play. Same microphone path, VAD, endpointer and
clients as the daemon, against the same stand-ins; only the pipeline differs. Not a product
code path: the benchmark's yardstick.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import structlog

from daemon.app import assistant_settings
from daemon.clients.asr import FunAsrClient
from daemon.clients.http_pool import make_http_client
from daemon.clients.llm import OpenAiCompatibleLlm
from daemon.clients.tts import make_tts
from daemon.config import Settings
from hardware.vad import make_vad
from hardware.wav_mic import WavMicrophone
from hardware.wav_speaker import WavSpeaker
from states.events import ChatMessage, TurnTimes
from states.listen import listen_for_utterance
from states.mic_feed import MicFeed
from states.speech_text import clean_for_speech

log = structlog.get_logger()


async def run_sequential(settings: Settings, question_wav: Path, output_wav: Path) -> tuple[WavMicrophone, WavSpeaker]:
    """One sequential turn; returns the opened (now closed) devices for the timeline figures.

    Stops once the answer has started playing: the first audio is all it is measured for.
    """
    async with AsyncExitStack() as stack:
        llm_http = await stack.enter_async_context(make_http_client())
        tts_http = await stack.enter_async_context(make_http_client())
        llm = OpenAiCompatibleLlm(settings.llm, llm_http)
        tts = make_tts(settings.tts, tts_http)
        rate = await tts.sample_rate()
        mic = WavMicrophone(question_wav, block_ms=settings.audio.mic_block_ms)
        speaker = WavSpeaker(output_wav, sample_rate=rate, block_ms=settings.audio.block_ms)
        await mic.open()
        await speaker.open()
        stack.push_async_callback(speaker.aclose)
        feed = MicFeed(mic)
        stack.push_async_callback(feed.aclose)
        vad = make_vad("silero", threshold=settings.vad.silero_threshold)
        times = TurnTimes()
        transcript = await listen_for_utterance(
            mic=feed,
            vad=vad,
            asr=FunAsrClient(settings.asr),
            settings=assistant_settings(settings).endpointer,
            times=times,
            clock=time.monotonic,
        )
        if transcript is None or not transcript.text:
            raise RuntimeError("sequential: nothing was heard")
        async with llm.stream_chat([ChatMessage("user", transcript.text)]) as stream:
            answer = "".join([delta async for delta in stream])
        pcm = bytearray()
        async with tts.synthesize(clean_for_speech(answer)) as audio:
            async for chunk in audio:
                pcm += chunk
        await speaker.write(bytes(pcm))
        await asyncio.wait_for(speaker.wait_audible(), 10)
        await asyncio.sleep(0.1)  # a few blocks, so the span is in the file
        speaker.flush()
        log.info("sequential_turn", transcript=transcript.text, chars=len(answer), audio_bytes=len(pcm))
    return mic, speaker
