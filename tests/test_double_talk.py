"""The double-talk rule that lets barge-in hear the user while the echo canceller still learns.

Synthetic signals, offline: the robot's "speech" is noise in syllable-long bursts, its echo comes
through the simulated room of hardware/room.py, and the VAD is a plain loudness threshold (it
calls any echo residue speech, as Silero does with a cold canceller's)."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.aec import NullEchoCanceller, SpeexEchoCanceller
from hardware.room import RoomAcoustics
from states.barge_in import BargeInEar, BargeInSettings, EchoTraining
from states.double_talk import DoubleTalkGate, DoubleTalkSettings
from states.ports import EchoCanceller

RATE = 16000
FRAME = 160  # the canceller's 10 ms


class LoudVad:
    """Speech is any 32 ms frame louder than -40 dBFS: echo residue included."""

    frame_bytes = 1024

    def is_speech(self, frame: bytes) -> bool:
        x = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        return bool(np.sqrt(np.mean(x * x)) > 330)

    def reset(self) -> None:
        pass


def bursts(seconds: float, *, level: float, seed: int) -> np.ndarray:
    """Noise in 150-300 ms bursts with 50-150 ms gaps, each burst at its own loudness (a talker)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    i = 0
    while i < len(out):
        n = int(rng.uniform(0.15, 0.3) * RATE)
        env = np.hanning(n) ** 0.3 * rng.uniform(0.4, 1.0)
        chunk = rng.normal(0.0, level, n) * env
        out[i : i + n] = chunk[: len(out) - i]
        i += n + int(rng.uniform(0.05, 0.15) * RATE)
    return out


def hear(aec: EchoCanceller, mic: np.ndarray, far: np.ndarray, settings: BargeInSettings) -> list[bool]:
    """Every VAD frame's verdict from a fresh ear (a cold canceller, a gate that knows nothing)."""
    ear = BargeInEar(vad=LoudVad(), aec=aec, settings=settings, training=EchoTraining())
    near_b = np.clip(mic, -32768, 32767).astype("<i2").tobytes()
    far_b = np.clip(far, -32768, 32767).astype("<i2").tobytes()
    verdicts = []
    for i in range(0, len(near_b) - 2 * FRAME + 1, 2 * FRAME):
        verdicts += [speech for _, speech in ear.hear(near_b[i : i + 2 * FRAME], far_b[i : i + 2 * FRAME])]
    return verdicts


def interruptions(verdicts: list[bool], min_ms: float = 150) -> list[float]:
    """Times (s, at the end of the min_ms run) at which the watch would confirm an interruption."""
    frame_s, need = 512 / RATE, int(np.ceil(min_ms / 1000 / (512 / RATE)))
    out, run = [], 0
    for i, speech in enumerate(verdicts):
        run = run + 1 if speech else 0
        if run == need:
            out.append((i + 1) * frame_s)
    return out


ROBOT_S = 20.0


@pytest.fixture(scope="module")
def robot() -> np.ndarray:
    return bursts(ROBOT_S, level=4000, seed=1)


@pytest.mark.parametrize("echo_gain", [0.5, 1.0])
@pytest.mark.parametrize("canceller", ["speex", "none"])
def test_echo_alone_never_interrupts_from_a_cold_start(robot: np.ndarray, echo_gain: float, canceller: str) -> None:
    mic = RoomAcoustics(echo_gain=echo_gain).render(robot, seed=2).astype(np.float64)
    # the whole run is the warm-up: the gate alone keeps the residue out ("none": a canceller
    # that never learns anything, the worst residue there is)
    settings = BargeInSettings(aec_warmup_s=ROBOT_S)

    def aec() -> EchoCanceller:
        return SpeexEchoCanceller() if canceller == "speex" else NullEchoCanceller()

    assert interruptions(hear(aec(), mic, robot, settings)) == []
    # the same ear with no reference (nothing to expect) calls the echo an interruption: the
    # residue is loud enough to fool the VAD, and only the gate keeps it out
    assert interruptions(hear(aec(), mic, np.zeros_like(robot), settings))


def test_a_user_clearly_louder_than_the_echo_is_heard_within_the_first_second(robot: np.ndarray) -> None:
    onset_s = 0.5
    user = np.zeros_like(robot)
    start = int(onset_s * RATE)
    user[start : start + 2 * RATE] = bursts(2.0, level=4000, seed=3)  # as loud as the robot, twice its echo
    mic = RoomAcoustics().render(robot, user, seed=2).astype(np.float64)

    heard = interruptions(hear(SpeexEchoCanceller(), mic, robot, BargeInSettings()))

    assert heard, "the user was not heard"
    assert onset_s < heard[0] < 1.0  # heard from the first second of the robot's first speech
    # the deaf start of old: nothing heard before the canceller has learnt for aec_warmup_s
    deaf = interruptions(hear(SpeexEchoCanceller(), mic, robot, BargeInSettings(aec_double_talk=False)))
    assert not [t for t in deaf if t < 2.5]


def test_the_gate_learns_the_echo_as_the_canceller_converges() -> None:
    gate = DoubleTalkGate(frame_s=0.01, settings=DoubleTalkSettings(prior_db=6.0, memory_s=0.3))
    far = (np.full(FRAME, 4000, dtype="<i2")).tobytes()
    assert gate.expected_echo == 0.0 and gate.user_louder(bytes(1024))  # nothing played: nothing to fear
    gate.observe(far, (np.full(FRAME, 400, dtype="<i2")).tobytes())
    assert gate.expected_echo == pytest.approx(4000 * 10 ** (6 / 20))  # the prior, before it knows
    for _ in range(30):  # 0.3 s of echo at -20 dB: the prior is forgotten (memory_s)
        gate.observe(far, (np.full(FRAME, 400, dtype="<i2")).tobytes())
    assert gate.ratio == pytest.approx(0.1, rel=1e-3)
    assert not gate.user_louder((np.full(512, 700, dtype="<i2")).tobytes())  # less than 6 dB above the echo
    assert gate.user_louder((np.full(512, 900, dtype="<i2")).tobytes())  # more


def test_the_ratio_rises_no_faster_than_it_may_creep() -> None:
    s = DoubleTalkSettings(prior_db=-20.0, creep_db_per_s=20.0, memory_s=0.3)
    gate = DoubleTalkGate(frame_s=0.01, settings=s)
    far = (np.full(FRAME, 4000, dtype="<i2")).tobytes()
    for _ in range(10):  # 100 ms of something as loud as the far end: a user's word, or new echo
        gate.observe(far, far)
    assert 20 * np.log10(gate.ratio) == pytest.approx(-20.0 + 2.0, abs=0.01)


def test_a_loud_frame_keeps_the_gate_open_for_hold_ms() -> None:
    gate = DoubleTalkGate(frame_s=0.01, settings=DoubleTalkSettings(prior_db=-20.0, hold_ms=50.0))
    far = (np.full(FRAME, 4000, dtype="<i2")).tobytes()
    quiet = (np.full(FRAME, 100, dtype="<i2")).tobytes()
    gate.observe(far, quiet)
    assert gate.user_louder((np.full(512, 3000, dtype="<i2")).tobytes())
    for _ in range(5):
        gate.observe(far, quiet)
        assert gate.user_louder(quiet)  # a quieter syllable of the same user
    gate.observe(far, quiet)
    assert not gate.user_louder(quiet)


def test_bad_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="frame_s"):
        DoubleTalkGate(frame_s=0.0)
    with pytest.raises(ValueError, match="double-talk settings"):
        DoubleTalkSettings(margin_db=-1.0)
    with pytest.raises(ValueError, match="double-talk settings"):
        DoubleTalkSettings(prior_db=float("nan"))


def test_a_frame_the_canceller_mostly_removed_is_echo_however_loud() -> None:
    gate = DoubleTalkGate(frame_s=0.01, settings=DoubleTalkSettings(prior_db=-20.0, removed_db=4.0, hold_ms=0.0))
    gate.observe((np.full(FRAME, 4000, dtype="<i2")).tobytes(), (np.full(FRAME, 100, dtype="<i2")).tobytes())
    loud = (np.full(512, 1500, dtype="<i2")).tobytes()  # 11 dB above the expected echo (400)
    assert not gate.user_louder(loud, (np.full(512, 3000, dtype="<i2")).tobytes())  # 6 dB removed: echo
    assert gate.user_louder(loud, (np.full(512, 1800, dtype="<i2")).tobytes())  # 1.6 dB removed: a user


def test_silence_before_the_robot_speaks_does_not_hold_the_gate_open() -> None:
    gate = DoubleTalkGate(frame_s=0.01, settings=DoubleTalkSettings(hold_ms=100.0))
    quiet, loud = bytes(2 * FRAME), (np.full(FRAME, 4000, dtype="<i2")).tobytes()
    gate.observe(quiet, quiet)
    assert gate.user_louder(bytes(1024))  # nothing played: anything may be the user
    gate.observe(loud, (np.full(FRAME, 2000, dtype="<i2")).tobytes())  # the robot's first syllable
    assert not gate.user_louder((np.full(512, 2000, dtype="<i2")).tobytes())  # is its echo, at once
