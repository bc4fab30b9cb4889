"""GET /metrics: the daemon's counters and latency histograms in the Prometheus text format.

Everything is derived from the event bus (``run``), so the conversation knows nothing about
Prometheus. The metrics live in a registry of their own, not prometheus_client's global one:
two daemons in one test process, or a test next to a running daemon, never share counters.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Mapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import exposition as _exposition

from daemon.event_bus import Event, EventBus

log = structlog.get_logger()

CONTENT_TYPE: str = _exposition.CONTENT_TYPE_LATEST
"""The Content-Type of ``render()``'s bytes."""

STATES = ("idle", "listening", "listening_held", "thinking", "speaking")
OUTCOMES = ("answered", "no_speech", "failed", "interrupted", "stop_word", "stopped", "listened", "said")
WAKE_SOURCES = ("hotword", "button", "control", "always", "on_start", "follow_up", "listen")
SERVICES = ("asr", "llm", "tts", "audio", "daemon")
GUARDED = ("asr", "llm", "tts")
"""The services that can be marked down (daemon/clients/guarded.py)."""
"""Known label values, created at zero so that a rate() over them works from the first scrape."""

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_BARGE_IN_BUCKETS = (0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

_HISTOGRAMS = {
    # turn_finished field (ms) -> (metric name, help, buckets)
    "asr_final_ms": ("moss_voice_asr_final_seconds", "End of speech to the final transcript.", _LATENCY_BUCKETS),
    "llm_first_token_ms": (
        "moss_voice_llm_first_token_seconds",
        "LLM request to its first token.",
        _LATENCY_BUCKETS,
    ),
    "tts_first_audio_ms": (
        "moss_voice_tts_first_audio_seconds",
        "TTS request to its first audio.",
        _LATENCY_BUCKETS,
    ),
    "first_audio_ms": (
        "moss_voice_first_audio_seconds",
        "End of the user's speech to the first audio of the answer.",
        _LATENCY_BUCKETS,
    ),
    "barge_in_ms": ("moss_voice_barge_in_seconds", "User speech to the answer stopping.", _BARGE_IN_BUCKETS),
}


class Metrics:
    """The Prometheus metrics of one daemon. ``run(bus)`` keeps them current; ``render()`` serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.turns = Counter("moss_voice_turns", "Finished turns by outcome.", ["outcome"], registry=self.registry)
        self.wakes = Counter("moss_voice_wakes", "Wakes by source.", ["source"], registry=self.registry)
        self.failures = Counter(
            "moss_voice_failures", "Failed turns by the service that failed.", ["service"], registry=self.registry
        )
        self.service_up = Gauge(
            "moss_voice_service_up",
            "1 while a service has an endpoint up, 0 while it is marked down (every endpoint failed).",
            ["service"],
            registry=self.registry,
        )
        self.service_downs = Counter(
            "moss_voice_service_downs",
            "Times a service was marked down: every endpoint failed before answering.",
            ["service"],
            registry=self.registry,
        )
        self.endpoint_up = Gauge(
            "moss_voice_endpoint_up",
            "1 while an endpoint of a service with several is up, 0 while it is marked down.",
            ["service", "url"],
            registry=self.registry,
        )
        self.state = Gauge(
            "moss_voice_state", "1 for the conversation's current state, 0 for the others.", ["state"],
            registry=self.registry,
        )  # fmt: skip
        self.latencies = {
            field: Histogram(name, doc, buckets=buckets, registry=self.registry)
            for field, (name, doc, buckets) in _HISTOGRAMS.items()
        }
        for outcome in OUTCOMES:
            self.turns.labels(outcome=outcome)
        for source in WAKE_SOURCES:
            self.wakes.labels(source=source)
        for service in SERVICES:
            self.failures.labels(service=service)
        for service in GUARDED:
            self.service_up.labels(service=service).set(1)  # until one is marked down
            self.service_downs.labels(service=service)
        self._states = set(STATES)
        self._set_state("idle")
        # What a long run must not grow (``moss-voice bench soak`` reads them): the event loop's
        # tasks and the open file descriptors, read when scraped; ProcessCollector adds the
        # standard process_resident_memory_bytes, process_open_fds and CPU seconds.
        tasks = Gauge("moss_voice_asyncio_tasks", "Tasks of the daemon's event loop.", registry=self.registry)
        tasks.set_function(_asyncio_tasks)
        fds = Gauge("moss_voice_open_fds", "File descriptors the daemon holds open.", registry=self.registry)
        fds.set_function(_open_fds)
        ProcessCollector(registry=self.registry)

    def run(self, bus: EventBus) -> Coroutine[Any, Any, None]:
        """Observe the bus's events until it closes (subscribed when called: ``EventBus.follow``)."""
        return bus.follow(self.observe)

    def observe(self, event: Event) -> None:
        """Count one event. Fields of the wrong type are logged and skipped, never raised."""
        fields = event.fields
        if event.name == "turn_finished":
            self.turns.labels(outcome=str(fields.get("outcome"))).inc()
            self._observe_latencies(fields)
        elif event.name == "wake":
            self.wakes.labels(source=str(fields.get("source"))).inc()
        elif event.name == "turn_failed":
            self.failures.labels(service=str(fields.get("service"))).inc()
        elif event.name == "state_changed":
            self._set_state(str(fields.get("dst")))
        elif event.name == "service_down":
            self.service_up.labels(service=str(fields.get("service"))).set(0)
            self.service_downs.labels(service=str(fields.get("service"))).inc()
        elif event.name == "service_up":
            self.service_up.labels(service=str(fields.get("service"))).set(1)
        elif event.name in ("endpoint_down", "endpoint_up"):
            labels = {"service": str(fields.get("service")), "url": str(fields.get("url"))}
            self.endpoint_up.labels(**labels).set(1 if event.name == "endpoint_up" else 0)

    def render(self) -> bytes:
        """The Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def _observe_latencies(self, fields: Mapping[str, Any]) -> None:
        for field, histogram in self.latencies.items():
            value = fields.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                log.warning("metrics_bad_field", field=field, value=repr(value))
                continue
            histogram.observe(value / 1000)

    def _set_state(self, current: str) -> None:
        self._states.add(current)
        for state in self._states:
            self.state.labels(state=state).set(1 if state == current else 0)


def _asyncio_tasks() -> float:
    """Tasks not yet done on the running loop (0 when scraped outside one, as in a test)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


def _open_fds() -> float:
    """Entries of /proc/self/fd (0 where there is no /proc)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
