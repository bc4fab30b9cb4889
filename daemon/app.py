"""The composition root: build the clients, devices and the Assistant from Settings, run, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import structlog

from daemon.clients.backoff import Backoff
from daemon.clients.guarded import PROBE_S
from daemon.clients.http_pool import make_http_client
from daemon.clients.tidying import Tidying
from daemon.clients.tls import TlsContexts, transport_risks
from daemon.config import Settings
from daemon.config_load import load_settings
from daemon.config_reload import changed_keys
from daemon.devices import make_echo_canceller, open_devices, reopen_microphone
from daemon.earcon import earcon_from_setting, failure_earcon, listening_earcon, thinking_earcon
from daemon.errors import ConfigError
from daemon.event_bus import Event, EventBus
from daemon.health import Health
from daemon.logs import configure_logging
from daemon.secrets import secret_values
from daemon.services import build_services
from daemon.systemd_notify import Notifier, watchdog_interval_s
from daemon.systemd_status import StatusLine, feed_watchdog
from daemon.wake_sources import Listeners, make_wake_engine, wake_summary
from hardware.errors import HardwareError
from hardware.vad import make_vad
from states.history import Conversation
from states.machine import State
from states.mic_feed import MicFeed
from states.model import Assistant, AssistantSettings, Earcons, Turn
from states.ports import Microphone, Speaker, Vad
from states.wake_watch import Wake

log = structlog.get_logger()

FALLBACK_OUTPUT_RATE = 24000
"""PaddleSpeech's csmsc models speak 24 kHz: the rate to assume when the TTS cannot be asked."""
DRAIN_ON_EXIT_S = 5.0

EXIT_ANSWERED, EXIT_FAILED, EXIT_NO_SPEECH, EXIT_STOPPED = 0, 1, 3, 4
"""``--once``: how its turn went (2 is a bad config: daemon/cli_config.py). EXIT_STOPPED: a signal
stopped the daemon before its turn was over, so nothing can be said of it."""


def assistant_settings(settings: Settings) -> AssistantSettings:
    """The conversation's settings are the config's own tables (``[vad]`` is the endpointer's)."""
    return AssistantSettings(
        endpointer=settings.vad,
        speech_text=settings.reply,
        barge_in=settings.barge_in,
        follow_up_s=settings.wake.follow_up_s,
        always=settings.wake.always,
        refractory_s=settings.wake.hotword.refractory_s,
        cues=settings.reply,
    )


KEPT_TURNS = 16


class App:
    """Runs the daemon until ``stop`` is set or, with ``once``, until one turn has finished."""

    def __init__(
        self,
        settings: Settings,
        *,
        once: bool = False,
        on_turn_end: Callable[[Turn], Awaitable[None] | None] | None = None,
        freeze_gc: bool = False,
        notifier: Notifier | None = None,
        config_path: str | Path | None = None,
        probe_s: float = PROBE_S,
        backoff: Backoff | None = None,
    ) -> None:
        """``freeze_gc``: once started, hide what start-up built from the garbage collector
        (the daemon process; not a process that runs many Apps, such as the tests).
        ``notifier``: tells systemd (READY, STATUS, WATCHDOG, STOPPING, RELOADING); none: silent.
        ``config_path``: the file ``reload()`` re-reads (SIGHUP).
        ``probe_s``: the bound of each service probe (at start-up: a service that does not answer
        within it is down, and start-up goes on; then the background probes of one marked down).
        ``backoff``: the waits between those background probes (default 0.5 s doubling to 30 s)."""
        self._probe_s = probe_s
        self._backoff = backoff
        self.settings = settings
        self._started_with = settings
        """What the devices and clients were built from: a reload does not rebuild them."""
        self._notifier = notifier or Notifier({})
        self._config_path = config_path
        self._pending: Settings | None = None
        """A reloaded config waiting for the turn in progress to end."""
        self._reloading: asyncio.Task[None] | None = None
        self._freeze_gc = freeze_gc
        self.once = once
        self._on_turn_end = on_turn_end
        self.turns: deque[Turn] = deque(maxlen=KEPT_TURNS)
        """The last finished turns (``--once``'s exit code, the demo, benchmarks), not all of them:
        a daemon runs for weeks (the 1000-turn soak found the list growing by every turn)."""
        self.assistant: Assistant | None = None
        """The running conversation, while ``run`` runs (other wake sources fire its triggers)."""
        self._turn_done = asyncio.Event()
        self._stopped = False
        """A signal stopped the daemon (not the end of the ``once`` turn)."""
        self.bus = EventBus()
        """The daemon's events: the control API's /events, hooks, metrics, LEDs subscribe."""

    async def run(self, stop: asyncio.Event | None = None) -> int:
        stop = stop or asyncio.Event()
        s = self.settings
        started = time.monotonic()
        async with AsyncExitStack() as stack:
            # One context per service, built once (each costs ~25 ms of the start); shared when equal.
            tls = TlsContexts()
            llm_tls = tls.get(verify=s.llm.tls_verify, ca_file=s.llm.ca_file)
            tts_tls = tls.get(verify=s.tts.tls_verify, ca_file=s.tts.ca_file)
            for service, risk in transport_risks(s):
                log.warning("insecure_transport", service=service, problem=risk)
            llm_http = await stack.enter_async_context(make_http_client(llm_tls))
            tts_http = await stack.enter_async_context(make_http_client(tts_tls))
            tidying = Tidying()
            stack.push_async_callback(tidying.wait)  # close handshakes left in the background
            services = build_services(
                s,
                llm_http,
                tts_http,
                events=self.bus,
                probe_s=self._probe_s,
                backoff=self._backoff,
                tidying=tidying,
                tts_tls=tts_tls,
            )
            stack.push_async_callback(services.aclose)
            # Every endpoint probed before the devices open (a WAV microphone's clock starts at open).
            await services.probe_all()
            probed = {name: guard.up for name, guard in services.guards.items()}
            tts_rate = await services.tts_rate()
            if tts_rate is None and s.audio.output_rate is None:
                log.warning("tts_samplerate_unavailable", assumed=FALLBACK_OUTPUT_RATE)
            output_rate = s.audio.output_rate or tts_rate or FALLBACK_OUTPUT_RATE
            aec = make_echo_canceller(s.aec)
            devices = await open_devices(stack, s.audio, s.aec, output_rate=output_rate)
            mic, speaker = devices.mic, devices.speaker
            stack.push_async_callback(self._drain, speaker)
            vad = self._make_vad()
            hotword = make_wake_engine(s)
            if hotword is not None:
                stack.push_async_callback(hotword.aclose)
            feed = MicFeed(mic, reopen=self._reopen_mic if s.audio.input.startswith("pyaudio:") else None)
            self.assistant = assistant = Assistant(
                mic=feed,
                speaker=speaker,
                vad=vad,
                asr=services.asr,
                llm=services.llm,
                tts=services.tts(output_rate),
                aec=aec,
                echo_reference=devices.reference,
                conversation=Conversation(
                    s.llm.system_prompt, max_turns=s.llm.history_turns, reset_after_s=s.llm.history_reset_s
                ),
                # --once ends with its first turn: no follow-up window to open
                settings=dataclasses.replace(assistant_settings(s), follow_up_s=0)
                if self.once
                else assistant_settings(s),
                earcons=Earcons(
                    listening=earcon_from_setting(s.earcons.listening, listening_earcon),
                    error=earcon_from_setting(s.earcons.error, failure_earcon),
                    thinking=earcon_from_setting(s.earcons.thinking, thinking_earcon),
                ),
                hotword=hotword,
                events=self.bus,
                on_turn_end=self._turn_ended,
            )
            stack.push_async_callback(assistant.aclose)
            health = Health(feed, guards=services.guards)
            for name, ok in probed.items():
                health.probed(name, ok)
            status = StatusLine(self._notifier, health)

            def observe(event: Event) -> None:
                health.observe(event)  # first: the status line reads it
                status.observe(event)

            following = asyncio.create_task(self.bus.follow(observe), name="health")
            stack.callback(following.cancel)
            await Listeners(s, assistant, self.bus, health).start(stack)
            services.start()  # the bus has its listeners: what start-up found down is announced
            log.info(
                "daemon_ready",
                ms=round((time.monotonic() - started) * 1000),
                input=s.audio.input,
                output=s.audio.output,
                aec=s.aec.engine,
                output_rate=output_rate,
                vad=s.vad.engine,
                asr=list(s.asr.urls),
                asr_flavour=s.asr.flavour,
                llm=list(s.llm.urls),
                model=s.llm.model,
                tts=list(s.tts.urls),
                wake=wake_summary(s),
                services={name: "up" if ok else "down" for name, ok in probed.items()},
            )
            if self._freeze_gc:
                # What start-up built lives as long as the daemon: out of the collector's sight,
                # a full collection no longer walks it (a 30 ms pause of the audio loop, measured).
                gc.freeze()
            feed.start()  # the wake sources hear everything from now on
            await assistant.ready()
            status.state = "idle"
            status.publish()
            self._notifier.ready()
            interval = watchdog_interval_s(os.environ, os.getpid())
            if interval is not None:
                watchdog = asyncio.create_task(feed_watchdog(self._notifier, feed, interval), name="watchdog")
                stack.callback(watchdog.cancel)
            if s.wake.on_start:
                await assistant.wake(wake=Wake("on_start"))
            waiters = [asyncio.create_task(stop.wait(), name="stop")]
            if self.once:
                waiters.append(asyncio.create_task(self._turn_done.wait(), name="once"))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    self._stopped = True
                    # The turn in progress is cancelled as the stack unwinds (assistant.aclose),
                    # then the last words drain for at most DRAIN_ON_EXIT_S.
                    self._notifier.stopping()
                    log.info("daemon_stopping", state=str(assistant.state.value))
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return self.exit_code()

    def exit_code(self) -> int:
        """With ``once``, how its turn went; else 0: the daemon was stopped, and a failed turn
        is no failure of the service (systemd would mark the unit failed)."""
        if not self.once:
            return EXIT_ANSWERED
        if not self.turns or (self._stopped and self.turns[-1].outcome == "stopped"):
            return EXIT_STOPPED if self._stopped else EXIT_FAILED
        last = self.turns[-1]
        if last.outcome == "failed":
            return EXIT_FAILED
        if last.outcome == "no_speech":
            return EXIT_NO_SPEECH
        return EXIT_ANSWERED

    async def _turn_ended(self, turn: Turn) -> None:
        self.turns.append(turn)
        if self._pending is not None:
            settings, self._pending = self._pending, None
            self._apply_live(settings)
        if self._on_turn_end is not None:
            result = self._on_turn_end(turn)
            if result is not None:
                await result
        self._turn_done.set()

    async def _reopen_mic(self) -> Microphone:
        return await reopen_microphone(self._started_with.audio)

    def reload(self) -> None:
        """SIGHUP: re-read the config file (in a task: called from a signal handler)."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload_config(), name="reload")

    async def reload_config(self) -> None:
        """Apply what can change live (now if idle, else when the turn in progress ends); name
        what needs a restart. A bad file is reported and the running config kept."""
        self._notifier.reloading()
        try:
            new = await asyncio.to_thread(load_settings, self._config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", path=str(self._config_path), problems=exc.problems)
        else:
            live = changed_keys(self.settings, new)[0]
            restart = changed_keys(self._started_with, new)[1]  # still differs from what was built
            if restart:
                log.warning("config_reload_needs_restart", keys=restart)
            assistant = self.assistant
            if assistant is None or assistant.state is State.IDLE:
                self._apply_live(new)
            else:
                self._pending = new
            log.info("config_reloaded", path=str(self._config_path), applied=live, deferred=self._pending is not None)
        self._notifier.ready()

    def _apply_live(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        if (old.log.level, old.log.format) != (new.log.level, new.log.format):
            configure_logging(new.log.level, new.log.format, secrets=secret_values(new))
        assistant = self.assistant
        if assistant is None:
            return
        settings = assistant_settings(new)
        assistant.settings = dataclasses.replace(settings, follow_up_s=0) if self.once else settings
        assistant.earcons = Earcons(
            listening=earcon_from_setting(new.earcons.listening, listening_earcon),
            error=earcon_from_setting(new.earcons.error, failure_earcon),
            thinking=earcon_from_setting(new.earcons.thinking, thinking_earcon),
        )
        n = new.llm
        if (
            dataclasses.replace(
                old.llm, system_prompt=n.system_prompt, history_turns=n.history_turns, history_reset_s=n.history_reset_s
            )
            != old.llm
        ):
            # A new prompt starts a new conversation: the history was held under the old one.
            assistant.conversation = Conversation(
                n.system_prompt, max_turns=n.history_turns, reset_after_s=n.history_reset_s
            )

    def _make_vad(self) -> Vad:
        v = self.settings.vad
        if v.engine == "webrtc":
            return make_vad("webrtc", aggressiveness=v.webrtc_aggressiveness)
        return make_vad("silero", threshold=v.silero_threshold, gate_db=v.silero_gate_db)

    @staticmethod
    async def _drain(speaker: Speaker) -> None:
        """Let the last words (or the failure earcon) play out before the output closes."""
        with contextlib.suppress(TimeoutError, HardwareError):
            async with asyncio.timeout(DRAIN_ON_EXIT_S):  # not wait_for: on 3.11 it can swallow a cancel
                await speaker.drain()
