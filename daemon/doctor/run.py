"""The doctor's checks in the order the table shows them, and the run of them all."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import Settings
from daemon.config_load import load_settings
from daemon.doctor import Check, Finding, run_checks
from daemon.doctor.audio import check_device_list, check_microphone, check_speaker
from daemon.doctor.services import check_asr, check_hotword, check_llm, check_transport, check_tts
from daemon.doctor.system import User, system_findings
from daemon.errors import ConfigError

SLACK_S = 2.0
"""Added to a service's connect timeout for the whole check (handshake, session, synthesis)."""
AUDIO_TIMEOUT_S = 10.0
LOCAL_TIMEOUT_S = 20.0
"""A hotword model on a slow board can take seconds to load."""


@dataclass(frozen=True)
class DoctorOptions:
    config: str | Path | None = None
    """None: the built-in defaults (what ``moss-voice run`` uses without --config)."""
    user: str | None = None
    """The user the daemon runs as; None: the current user."""
    play: bool = False
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


async def doctor(options: DoctorOptions) -> list[Finding]:
    """Every check's findings. Never raises for what it finds; a bad config skips the checks
    that need it (they would probe what the file did not mean)."""
    source = str(options.config) if options.config is not None else "built-in defaults"
    try:
        settings = load_settings(options.config, options.env)
    except ConfigError as exc:
        problems = [
            Finding("config", "FAIL", problem, "fix the file (`moss-voice config check PATH`)")
            for problem in exc.problems
        ]
        skipped = Finding("services", "warn", "not checked: the config has problems", "fix the config first")
        return [*problems, skipped, *await run_checks(system_checks(options, Settings()))]
    findings = [Finding("config", "ok", f"{source}: every key and value is valid")]
    return findings + await run_checks(checks_for(settings, options))


def checks_for(s: Settings, options: DoctorOptions) -> list[Check]:
    async def asr() -> list[Finding]:
        return await check_asr(s)

    async def llm() -> list[Finding]:
        return await check_llm(s, max_wait_s=s.llm.connect_timeout_s)

    async def tts() -> list[Finding]:
        return await check_tts(s)

    async def hotword() -> list[Finding]:
        return await check_hotword(s)

    async def transport() -> list[Finding]:
        return await check_transport(s)

    async def devices() -> list[Finding]:
        return await check_device_list(s.audio)

    async def microphone() -> list[Finding]:
        return await check_microphone(s.audio)

    async def speaker() -> list[Finding]:
        return await check_speaker(s.audio, play=options.play)

    return [
        Check("audio devices", devices, AUDIO_TIMEOUT_S),
        Check("microphone", microphone, AUDIO_TIMEOUT_S, s.audio.input),
        Check("speaker", speaker, AUDIO_TIMEOUT_S, s.audio.output),
        Check("asr", asr, s.asr.connect_timeout_s + s.asr.final_timeout_s + SLACK_S, ", ".join(s.asr.urls)),
        Check("llm", llm, 2 * s.llm.connect_timeout_s + SLACK_S, ", ".join(s.llm.urls)),
        Check("tts", tts, 2 * s.tts.connect_timeout_s + SLACK_S, ", ".join(s.tts.urls)),
        Check("hotword", hotword, LOCAL_TIMEOUT_S),
        Check("transport", transport, LOCAL_TIMEOUT_S),
        *system_checks(options, s),
    ]


def system_checks(options: DoctorOptions, s: Settings) -> list[Check]:
    async def system() -> list[Finding]:
        try:
            user = User.lookup(options.user)
        except KeyError:
            return [
                Finding("user", "FAIL", f"no user {options.user!r} on this system", "create it (sudo make install)")
            ]
        # Another user's sound server is found by its /run/user/UID, not by this shell's variables.
        env = options.env if user.uid == os.getuid() else {}
        you = "" if user.uid == os.getuid() else "; the devices above were opened as you"
        return [Finding("user", "ok", f"checking as {user.name} (uid {user.uid}){you}"), *system_findings(user, s, env)]

    return [Check("system", system, LOCAL_TIMEOUT_S)]
