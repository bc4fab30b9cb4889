"""The barge-in watch from a cold start: the echo canceller has learnt nothing yet.

Part of ``moss-voice bench aec``. The microphone of the simulated room goes through the barge-in
watch's own ear (``states.barge_in.BargeInEar``: a fresh SpeexDSP canceller, the double-talk
gate, Silero), frame by frame, as the daemon's first answers after start would; every run of
speech verdicts lasting ``min_speech_ms`` is an interruption. Three rules side by side, from the
same pass:

* ``deaf``: the rule before issue 12, nothing counts until the canceller has heard
  ``aec_warmup_s`` of the robot's voice;
* ``gate``: while it learns, speech counts when clearly louder than the expected echo (now);
* ``vad``: neither (what the VAD alone makes of the residue).

False triggers: the robot's own voice only, for the whole run, the first seconds included.
Cut-ins: a user interrupting the robot's first speech ``at_s`` seconds into it, each on a fresh
canceller: is it heard, and how long after its onset (audio time, the 150 ms rule included)?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hardware.aec import SpeexEchoCanceller
from hardware.room import RoomAcoustics
from hardware.vad import make_vad
from states.barge_in import BargeInEar, BargeInSettings, EchoTraining, Heard
from states.double_talk import DoubleTalkGate, DoubleTalkSettings

RATE = 16000
LOUD = 300
CUT_IN_AT_S = (0.5, 1.0, 1.5, 2.0, 3.0)
CUT_IN_GAINS = (1.0, 0.5)
"""The user at the microphone 6 dB louder than the direct echo (leaning in to interrupt), and
as loud as it (``bench aec``'s double-talk level)."""
RULES = ("deaf", "gate", "vad")
CUT_IN_RULES = ("deaf", "gate")


@dataclass(frozen=True)
class CutIn:
    at_s: float
    """Onset of the user's speech, seconds after the robot's first loud sample."""
    user_gain: float
    heard_ms: dict[str, float | None]
    """Per rule: onset to the interruption confirmed (audio time), None when never heard."""
    duck_ms: dict[str, float | None]
    """Per rule: onset to playback paused (``duck_after_ms`` of speech verdicts, audio time)."""


@dataclass(frozen=True)
class ColdStart:
    seconds: float
    settings: BargeInSettings
    trained_at_s: float | None
    """Audio time at which the canceller had heard ``aec_warmup_s`` of the robot (the warm-up end)."""
    triggers: dict[str, list[float]]
    """Per rule: start times (s) of the false triggers on the robot's own voice."""
    ducks: dict[str, int]
    """Per rule: how often the robot's own voice paused its playback (``duck_after_ms`` of speech)."""
    cut_ins: tuple[CutIn, ...]


def listen(
    mic: np.ndarray,
    far: np.ndarray,
    settings: BargeInSettings,
    *,
    gate: DoubleTalkSettings | None = None,
    frame_ms: int = 10,
    filter_ms: int = 256,
) -> tuple[list[Heard], float]:
    """Every VAD frame of ``mic`` as a fresh barge-in ear judges it, and the VAD frame length (s)."""
    aec = SpeexEchoCanceller(frame_ms=frame_ms, filter_ms=filter_ms)
    vad = make_vad("silero")
    training = EchoTraining(gate=DoubleTalkGate(frame_s=frame_ms / 1000, settings=gate))
    ear = BargeInEar(vad=vad, aec=aec, settings=settings, training=training)
    near_b, far_b = mic.astype("<i2").tobytes(), far.astype("<i2").tobytes()
    fb = aec.frame_bytes
    heard: list[Heard] = []
    for i in range(0, len(near_b) - fb + 1, fb):
        heard += ear.hear_detailed(near_b[i : i + fb], far_b[i : i + fb])
    return heard, vad.frame_bytes / 2 / RATE


def verdicts(heard: Sequence[Heard], rule: str) -> list[bool]:
    if rule == "deaf":
        return [h.vad and not h.learning for h in heard]
    if rule == "gate":
        return [h.vad and (not h.learning or h.louder) for h in heard]
    if rule == "vad":
        return [h.vad for h in heard]
    raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")


def runs(flags: Sequence[bool], frame_s: float, min_ms: float) -> list[tuple[float, float]]:
    """``(start, confirmed)`` times of every run of True lasting ``min_ms``: confirmed at its
    ``min_ms`` point, as the watch confirms an interruption."""
    need = max(1, int(np.ceil(min_ms / 1000 / frame_s - 1e-9)))
    out, run = [], 0
    for i, flag in enumerate(flags):
        run = run + 1 if flag else 0
        if run == need:
            out.append(((i + 1 - need) * frame_s, (i + 1) * frame_s))
    return out


def first_loud(x: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > LOUD)
    return float(loud[0]) / RATE if len(loud) else 0.0


def cut_in(
    far: np.ndarray,
    near: np.ndarray,
    at_s: float,
    gain: float,
    room: RoomAcoustics,
    settings: BargeInSettings,
    gate: DoubleTalkSettings | None = None,
) -> CutIn:
    """A user (``near`` times ``gain``) starting ``at_s`` after the robot's first loud sample, over
    its echo, through a fresh ear: when each rule pauses the answer and confirms the interruption."""
    robot_on = first_loud(far)
    onset = robot_on + at_s
    start = int((onset - first_loud(near)) * RATE)
    length = start + len(near) + RATE // 2
    near_track = np.zeros(length)
    near_track[start : start + len(near)] = gain * near
    far_part = np.zeros(length)
    far_part[: min(length, len(far))] = far[:length]
    heard, frame_s = listen(room.render(far_part, near_track, seed=3), far_part.astype("<i2"), settings, gate=gate)
    heard_ms: dict[str, float | None] = {}
    duck_ms: dict[str, float | None] = {}
    for rule in CUT_IN_RULES:
        flags = verdicts(heard, rule)
        for out, min_ms in ((heard_ms, settings.min_speech_ms), (duck_ms, settings.duck_after_ms)):
            confirmed = [c for s, c in runs(flags, frame_s, min_ms) if s >= onset - 0.1]
            out[rule] = (confirmed[0] - onset) * 1000 if confirmed else None
    return CutIn(at_s, gain, heard_ms, duck_ms)


def measure_cold_start(
    far: np.ndarray,
    near: np.ndarray,
    *,
    acoustics: RoomAcoustics | None = None,
    settings: BargeInSettings | None = None,
    cut_in_at_s: Sequence[float] = CUT_IN_AT_S,
    cut_in_gains: Sequence[float] = CUT_IN_GAINS,
    gate: DoubleTalkSettings | None = None,
) -> ColdStart:
    """False triggers over all of ``far`` fed back from a cold canceller, and the cut-ins."""
    room = acoustics or RoomAcoustics()
    s = settings or BargeInSettings()
    heard, frame_s = listen(room.render(far, seed=1), far, s, gate=gate)
    trained = next((i for i, h in enumerate(heard) if not h.learning), None)
    triggers = {rule: [a for a, _ in runs(verdicts(heard, rule), frame_s, s.min_speech_ms)] for rule in RULES}
    ducks = {rule: len(runs(verdicts(heard, rule), frame_s, s.duck_after_ms)) for rule in RULES}
    cuts = tuple(cut_in(far, near, at, gain, room, s, gate) for gain in cut_in_gains for at in cut_in_at_s)
    return ColdStart(
        seconds=len(far) / RATE,
        settings=s,
        trained_at_s=None if trained is None else trained * frame_s,
        triggers=triggers,
        ducks=ducks,
        cut_ins=cuts,
    )


def format_cold_start(r: ColdStart) -> str:
    s = r.settings
    trained = "never" if r.trained_at_s is None else f"{r.trained_at_s:.1f} s in"
    lines = [
        f"barge-in from a cold start (aec_warmup_s {s.aec_warmup_s:g}: warm-up over {trained}; "
        f"min_speech_ms {s.min_speech_ms}):",
        "  rule: deaf = nothing heard during the warm-up (before issue 12); gate = the double-talk rule (now);",
        "        vad = Silero alone on the canceller's output",
        f"  false triggers on {r.seconds:g} s of the robot's own voice, from cold:",
    ]
    for rule in RULES:
        times = r.triggers[rule]
        first = ", ".join(f"{t:.1f}" for t in times[:8]) + (" ..." if len(times) > 8 else "")
        lines.append(
            f"    {rule:5} {len(times):4d}, playback paused {r.ducks[rule]:4d} times"
            + (f"  (triggers at {first} s)" if times else "")
        )
    lines.append(
        "  a user cutting into the robot's first speech (fresh canceller each), onset -> playback paused "
        f"({s.duck_after_ms} ms of speech) / interruption confirmed ({s.min_speech_ms} ms):"
    )
    lines.append("    user gain  into the speech  " + "  ".join(f"{rule:>19}" for rule in CUT_IN_RULES))
    for c in r.cut_ins:
        cells = "  ".join(f"{_ms(c.duck_ms[rule]):>9} {_ms(c.heard_ms[rule]):>9}" for rule in CUT_IN_RULES)
        lines.append(f"    x{c.user_gain:<8g}  {c.at_s:>5.1f} s         {cells}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "missed" if value is None else f"{value:.0f} ms"
