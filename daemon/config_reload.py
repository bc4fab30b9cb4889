"""SIGHUP: which keys of a re-read config can change while the daemon runs, and which need a restart.

Live: what is read afresh at each turn (the conversation's settings, the earcons, the LLM's
system prompt and history limits) and the log level. Everything else (devices, service URLs, the
control API's address, the wake engines, the VAD engine...) was built once at start: a change to
it is reported, not applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from daemon.config import Settings

LIVE_TABLES = ("log", "reply", "barge_in", "earcons")
LIVE_KEYS = (
    "llm.system_prompt",
    "llm.history_turns",
    "llm.history_reset_s",
    "wake.follow_up_s",
    "wake.always",
    "wake.hotword.refractory_s",
)
VAD_BUILT_AT_START = ("vad.engine", "vad.webrtc_aggressiveness", "vad.silero_threshold", "vad.silero_gate_db")
"""The VAD engine is built once; the rest of ``[vad]`` is the endpointer's, read at each turn."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"llm.url": ..., "wake.hotword.engine": ...}``: one entry per leaf key."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out.update(flatten(getattr(value, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix.rstrip("."): value}


def is_live(key: str) -> bool:
    if key.split(".")[0] in LIVE_TABLES or key in LIVE_KEYS:
        return True
    return key.startswith("vad.") and key not in VAD_BUILT_AT_START


def changed_keys(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """The keys that differ: (applied live, needing a restart)."""
    before, after = flatten(old), flatten(new)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [k for k in changed if is_live(k)], [k for k in changed if not is_live(k)]
