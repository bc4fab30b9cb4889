"""Echo cancellation: the speex adapter removes echo and keeps the user; the far-end reference is
sample-exact, fills silence, and stays bounded.

Signals are espeak-ng speech through the simulated room of hardware/room.py (offline, no clock).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.tools.bench.aec import count_triggers, erle_db
from daemon.tools.bench.aec_cold import runs, verdicts
from daemon.tools.bench.vad import synth_speech
from hardware.aec import ENGINES, NullEchoCanceller, SpeexEchoCanceller, make_echo_canceller
from hardware.room import RoomAcoustics
from hardware.wavfile import load_wav_16k_mono
from states.barge_in import Heard
from states.echo_reference import EchoReference

RATE = 16000


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """Robot speech (far end, 8 s) and a user's Mandarin sentence (near end), int16 16 kHz."""
    folder: Path = tmp_path_factory.mktemp("aec")
    robot = [
        load_wav_16k_mono(synth_speech(folder / f"r{i}.wav", text, "en-us"))
        for i, text in enumerate(
            [
                "Hello, I am the service robot. How can I help you today?",
                "The meeting room is on the second floor, next to the elevator.",
            ]
        )
    ]
    pause = np.zeros(RATE // 4, dtype="<i2")
    once = np.concatenate([robot[0], pause, robot[1], pause])
    far = np.tile(once, 8 * RATE // len(once) + 1)[: 8 * RATE]
    user = synth_speech(folder / "user.wav", "ni hao, jin tian tian qi zen me yang?", "cmn-latn-pinyin")
    near = load_wav_16k_mono(user)
    return far, near


def run(aec: SpeexEchoCanceller | NullEchoCanceller, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    fb = aec.frame_bytes
    near_b, far_b = mic.tobytes(), far.astype("<i2").tobytes()
    usable = len(near_b) - len(near_b) % fb
    return np.frombuffer(
        b"".join(aec.process(near_b[i : i + fb], far_b[i : i + fb]) for i in range(0, usable, fb)), "<i2"
    )


def corr(x: np.ndarray, y: np.ndarray) -> float:
    a, b = x.astype(np.float64), y.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


# --------------------------------------------------------------------------- the speex adapter


def test_echo_only_is_removed_after_convergence(speech: tuple[np.ndarray, np.ndarray]) -> None:
    far, _ = speech
    mic = RoomAcoustics().render(far, seed=1)  # 40 ms, x0.5, two reflections, noise rms 10
    out = run(SpeexEchoCanceller(), mic, far)
    assert len(out) == len(mic)
    settled = 3 * RATE
    assert erle_db(mic[settled:], out[settled:]) > 15.0
    assert erle_db(mic[:RATE], out[:RATE]) < erle_db(mic[settled:], out[settled:])  # it had to learn


def test_double_talk_keeps_the_user(speech: tuple[np.ndarray, np.ndarray]) -> None:
    far, near = speech
    start = 5 * RATE  # the filter has adapted to the echo by then
    user = np.zeros(len(far))
    user[start : start + len(near)] = 0.5 * near[: len(far) - start]
    mic = RoomAcoustics().render(far, user, seed=2)
    out = run(SpeexEchoCanceller(), mic, far)
    seg = slice(start, min(start + len(near), len(out)))
    raw, cleaned = corr(mic[seg], user[seg]), corr(out[seg], user[seg])
    assert cleaned > 0.85
    assert cleaned > raw + 0.08, (raw, cleaned)


def test_frames_of_the_wrong_size_are_value_errors() -> None:
    for aec in (SpeexEchoCanceller(), NullEchoCanceller(), SpeexEchoCanceller(frame_ms=20, filter_ms=128)):
        good = bytes(aec.frame_bytes)
        for near, far in ((good[:-2], good), (good, good[:-2]), (good + b"\0\0", good + b"\0\0"), (b"", b"")):
            with pytest.raises(ValueError, match=f"{aec.frame_bytes} bytes"):
                aec.process(near, far)
        with pytest.raises(ValueError, match="whole number"):
            aec.process_block(good * 3, good * 2)
        assert len(aec.process(good, good)) == aec.frame_bytes


def test_bad_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="frame_ms"):
        SpeexEchoCanceller(frame_ms=0)
    with pytest.raises(ValueError, match="frame_ms"):
        NullEchoCanceller(sample_rate=44100, frame_ms=1)
    with pytest.raises(ValueError, match="filter_ms"):
        SpeexEchoCanceller(frame_ms=20, filter_ms=10)
    with pytest.raises(ValueError, match="unknown echo canceller"):
        make_echo_canceller("webrtc")


def test_null_canceller_passes_the_microphone_through() -> None:
    aec = make_echo_canceller("off", frame_ms=10, filter_ms=256)
    assert isinstance(aec, NullEchoCanceller)
    near = np.random.default_rng(0).integers(-30000, 30000, 320).astype("<i2").tobytes()
    far = bytes(reversed(near))
    assert aec.process(near[:320], far[:320]) == near[:320]
    assert aec.process_block(near, far) == near
    aec.reset()
    assert aec.frame_bytes == 320 and set(ENGINES) == {"speex", "off"}


def test_process_block_is_frame_by_frame_and_reset_forgets(speech: tuple[np.ndarray, np.ndarray]) -> None:
    far, _ = speech
    mic = RoomAcoustics(noise_rms=0).render(far)
    a, b = make_echo_canceller("speex"), SpeexEchoCanceller(frame_ms=10)
    assert isinstance(a, SpeexEchoCanceller)
    n = 4 * RATE
    blocks = b"".join(a.process_block(mic[i : i + 320].tobytes(), far[i : i + 320].tobytes()) for i in range(0, n, 320))
    frames = run(b, mic[:n], far[:n])
    assert blocks == frames.tobytes()  # the same filter, fed the same frames
    assert erle_db(mic[3 * RATE : n], frames[3 * RATE :]) > 10  # it has converged by now
    a.reset()
    again = run(a, mic[:RATE], far[:RATE])
    assert erle_db(mic[:1600], again[:1600]) < 3  # a new filter: the first 100 ms pass almost as they are


# --------------------------------------------------------------------------- the far-end reference


def ramp(n: int, start: int = 1) -> bytes:
    return np.arange(start, start + n, dtype="<i2").tobytes()


def samples(pcm: bytes) -> list[int]:
    return np.frombuffer(pcm, "<i2").tolist()


def test_reference_is_sample_exact_across_pushes() -> None:
    ref = EchoReference(delay_ms=40.0)
    t0 = 1234.5678901  # any clock value: times land on round(t * 16000)
    data = np.arange(1, 3201, dtype="<i2")
    for k in range(0, 3200, 320):  # 20 ms pushes, each timed by its own first sample
        ref.push(data[k : k + 320].tobytes(), t0 + k / RATE)
    for k in (0, 1, 319, 320, 1000, 3000):
        got = ref.far_for(t0 + 0.040 + k / RATE, 320)  # a mic frame captured 40 ms (the delay) later
        expect = data[k : k + 160].tolist()
        assert samples(got) == expect + [0] * (160 - len(expect)), k
    ref.delay_ms = 0.0
    assert samples(ref.far_for(t0 + 7 / RATE, 8)) == [8, 9, 10, 11]


def test_reference_fills_silence_where_nothing_was_played() -> None:
    ref = EchoReference()
    assert ref.far_for(10.0, 8) == bytes(8) and ref.end_time is None
    ref.push(ramp(4), 10.0)
    ref.push(ramp(4, start=101), 10.0 + 10 / RATE)  # 6 samples of nothing in between
    got = samples(ref.far_for(10.0 - 2 / RATE, 40))
    assert got == [0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 101, 102, 103, 104, 0, 0, 0, 0]
    assert ref.end_time == pytest.approx(10.0 + 14 / RATE)
    ref.push(ramp(2, start=-5), 10.0 + 3 / RATE)  # replayed over a recorded stretch: the newest wins
    assert samples(ref.far_for(10.0, 12)) == [1, 2, 3, -5, -4, 0]


def test_reference_memory_is_bounded() -> None:
    ref = EchoReference(history_s=0.5)
    block = np.full(320, 7, dtype="<i2").tobytes()
    for k in range(500):  # 10 s of 20 ms pushes
        ref.push(block, 50.0 + k * 0.02)
        assert ref.buffered_samples <= RATE // 2
    assert ref.buffered_samples == RATE // 2
    end = 60.0
    assert samples(ref.far_for(end - 0.5, 8)) == [7] * 4  # the newest half second is there
    assert ref.far_for(end - 0.6, 8) == bytes(8)  # older audio is gone
    ref.push(ramp(RATE), 100.0)  # one push longer than the history keeps its newest part
    assert ref.buffered_samples == RATE // 2
    assert samples(ref.far_for(100.0 + 0.5, 4)) == [8001, 8002]
    assert ref.far_for(100.0, 2) == bytes(2)


def test_reference_flush() -> None:
    ref = EchoReference()
    ref.push(ramp(10), 5.0)
    ref.flush(from_time=5.0 + 6 / RATE)  # a speaker that pushed ahead drops its unplayed part
    assert samples(ref.far_for(5.0, 20)) == [1, 2, 3, 4, 5, 6, 0, 0, 0, 0]
    ref.flush()
    assert ref.far_for(5.0, 20) == bytes(20) and ref.buffered_samples == 0


def test_reference_rejects_bad_input() -> None:
    ref = EchoReference()
    with pytest.raises(ValueError, match="whole int16"):
        ref.push(b"\0\0\0", 1.0)
    with pytest.raises(ValueError, match="n_bytes"):
        ref.far_for(1.0, 3)
    with pytest.raises(ValueError, match="delay_ms"):
        ref.delay_ms = -1.0
    with pytest.raises(ValueError, match="finite"):
        ref.far_for(float("nan"), 2)
    with pytest.raises(ValueError, match="history_s"):
        EchoReference(history_s=0)


def test_trigger_counting_needs_150_ms_runs() -> None:
    frame_s = 0.032
    verdicts = [True] * 4 + [False] + [True] * 5 + [False] * 3 + [True] * 10
    assert count_triggers(verdicts, frame_s) == [pytest.approx(5 * frame_s), pytest.approx(13 * frame_s)]


def test_cold_start_rules_and_runs() -> None:
    frame = b""
    heard = [
        Heard(frame, speech=False, vad=True, louder=False, learning=True),  # residue, kept out by the gate
        Heard(frame, speech=True, vad=True, louder=True, learning=True),  # a user during the warm-up
        Heard(frame, speech=True, vad=True, louder=False, learning=False),  # after it, the VAD alone
    ]
    assert verdicts(heard, "deaf") == [False, False, True]
    assert verdicts(heard, "gate") == [False, True, True]
    assert verdicts(heard, "vad") == [True, True, True]
    with pytest.raises(ValueError, match="unknown rule"):
        verdicts(heard, "other")
    # runs of True lasting 64 ms (two 32 ms frames): start, and confirmed at the 64 ms point
    assert runs([False, True, True, True, False, True], 0.032, 64) == [(0.032, 0.096)]
