"""The endpointer on synthetic VAD verdicts: 20 ms frames whose bytes say which frame they are."""

from __future__ import annotations

import random

import numpy as np
import pytest

from states.endpointer import (
    Endpointer,
    EndpointerSettings,
    Framer,
    LoudnessGate,
    NoSpeech,
    SpeechAudio,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
)
from states.settings import SettingsError

FRAME_BYTES = 640  # 20 ms at 16 kHz

SETTINGS = EndpointerSettings(
    end_trim_ms=0,  # the VAD verdicts alone: these frames carry indices, not sound
    speech_start_ms=100,  # 5 frames
    speech_start_ratio=1.0,
    end_silence_ms=200,  # 10 frames
    pre_roll_ms=60,  # 3 frames
    max_utterance_s=2.0,  # 100 frames
    no_speech_timeout_s=1.0,  # 50 frames
)


def frame(i: int) -> bytes:
    """A frame that carries its own index, so any mix-up of frames is visible."""
    return i.to_bytes(4, "little") * (FRAME_BYTES // 4)


def run(ep: Endpointer, verdicts: list[bool]) -> list[tuple[int, object]]:
    """Push frames 0..n-1 with the given verdicts; (frame index, event) for every event."""
    out = []
    for i, speech in enumerate(verdicts):
        out.extend((i, e) for e in ep.push(frame(i), speech))
    return out


def test_frame_counts_round_up_from_the_settings() -> None:
    ep = Endpointer(EndpointerSettings(), frame_bytes=1024)  # silero: 32 ms frames
    assert ep.frame_ms == 32
    assert ep.start_frames == 4  # 120 ms
    assert ep.end_frames == 22  # 700 ms
    assert ep.pre_roll_frames == 10  # 300 ms
    assert ep.max_frames == 469  # 15 s
    assert ep.no_speech_frames == 250  # 8 s


def test_speech_start_carries_exact_pre_roll_and_confirming_frames() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    events = run(ep, [False] * 10 + [True] * 5)
    assert len(events) == 1
    index, event = events[0]
    assert index == 14  # the 5th speech frame confirms
    assert isinstance(event, SpeechStarted)
    # 3 pre-roll frames (7, 8, 9) then the onset (10) to the confirming frame (14).
    assert event.audio == b"".join(frame(i) for i in range(7, 15))
    assert len(event.audio) == (3 + 5) * FRAME_BYTES
    assert ep.in_speech


def test_pre_roll_is_shorter_when_speech_starts_at_once() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    events = run(ep, [False, True, True, True, True, True])
    assert [type(e) for _, e in events] == [SpeechStarted]
    assert events[0][1].audio == b"".join(frame(i) for i in range(6))


def test_short_blips_are_ignored_until_the_no_speech_timeout() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    blips = ([True] * 4 + [False]) * 12  # 80 ms of "speech" at a time, never 100 ms
    events = run(ep, blips)
    assert [(i, type(e)) for i, e in events] == [(49, NoSpeech)]
    assert ep.done and not ep.in_speech
    assert ep.push(frame(99), True) == []  # done: nothing more until reset()


def test_mostly_consecutive_speech_starts_despite_one_dropped_frame() -> None:
    settings = EndpointerSettings(speech_start_ms=200, speech_start_ratio=0.8, pre_roll_ms=0)
    ep = Endpointer(settings, FRAME_BYTES)
    assert (ep.start_frames, ep.start_required) == (10, 8)
    verdicts = [False] * 5 + [True, True, True, False, True, True, True, True, True]
    events = run(ep, verdicts)
    assert [(i, type(e)) for i, e in events] == [(13, SpeechStarted)]
    assert events[0][1].audio == b"".join(frame(i) for i in range(5, 14))  # from the onset


def test_end_comes_after_end_silence_and_speech_resets_the_count() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    verdicts = [True] * 5 + [False] * 9 + [True] + [False] * 10 + [False] * 5
    events = run(ep, verdicts)
    kinds = [type(e) for _, e in events]
    assert kinds[0] is SpeechStarted
    assert kinds[1:-1] == [SpeechAudio] * 20  # frames 5..24, trailing silence included
    assert events[-1] == (24, SpeechEnded("silence"))
    assert ep.done
    # Nothing after the end decision.
    assert all(i <= 24 for i, _ in events)


def test_max_length_cuts_the_utterance() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    events = run(ep, [False] * 3 + [True] * 200)
    assert events[-1] == (102, SpeechEnded("max_length"))  # onset at frame 3, 100 frames long
    audio = events[0][1].audio + b"".join(e.audio for _, e in events[1:-1])
    assert audio == b"".join(frame(i) for i in range(103))  # 3 frames pre-roll + 100


def test_no_speech_timeout_counts_from_the_first_frame() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    assert run(ep, [False] * 49) == []
    assert ep.push(frame(49), False) == [NoSpeech()]


def test_no_speech_timeout_can_be_disabled() -> None:
    ep = Endpointer(EndpointerSettings(no_speech_timeout_s=None), FRAME_BYTES)
    assert run(ep, [False] * 2000) == []
    assert not ep.done


def test_reset_listens_for_a_new_utterance() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    run(ep, [False] * 50)
    assert ep.done
    ep.reset()
    assert not ep.done and ep.frames_seen == 0
    events = run(ep, [True] * 5)
    assert isinstance(events[0][1], SpeechStarted)


@pytest.mark.parametrize("seed", range(20))
def test_audio_is_conserved_from_pre_roll_to_end(seed: int) -> None:
    """Random verdicts: what comes out is one contiguous run of input frames, each once, in order."""
    rng = random.Random(seed)
    verdicts = []
    while len(verdicts) < 400:
        verdicts += [rng.random() < 0.5] * rng.randint(1, 15)
    settings = EndpointerSettings(
        speech_start_ms=100,
        speech_start_ratio=0.8,
        end_silence_ms=200,
        pre_roll_ms=100,
        max_utterance_s=3.0,
        no_speech_timeout_s=None,
        end_trim_ms=0,
    )
    ep = Endpointer(settings, FRAME_BYTES)
    events = run(ep, verdicts)
    assert isinstance(events[0][1], SpeechStarted)
    assert all(isinstance(e, SpeechAudio) for _, e in events[1:-1])
    end_index, end = events[-1]
    assert isinstance(end, SpeechEnded)

    audio = events[0][1].audio + b"".join(e.audio for _, e in events[1:-1])
    assert len(audio) % FRAME_BYTES == 0
    first = end_index + 1 - len(audio) // FRAME_BYTES
    assert first >= 0
    assert audio == b"".join(frame(i) for i in range(first, end_index + 1))
    # A full pre-roll, unless the onset was too close to the start of the stream.
    onset = first + ep.pre_roll_frames if first > 0 else verdicts.index(True)
    assert onset <= ep.pre_roll_frames or first > 0
    assert verdicts[onset]  # the utterance's first frame after the pre-roll is speech
    if end.reason == "silence":
        assert not any(verdicts[end_index - ep.end_frames + 1 : end_index + 1])


def test_wrong_frame_size_is_rejected() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    with pytest.raises(ValueError, match="640"):
        ep.push(b"\0" * 100, True)
    with pytest.raises(ValueError):
        Endpointer(SETTINGS, frame_bytes=641)


def test_framer_cuts_mic_blocks_into_vad_frames() -> None:
    framer = Framer(1024)
    stream = bytes(range(256)) * 20  # 5120 bytes
    out: list[bytes] = []
    for i in range(0, len(stream), 640):  # 20 ms mic blocks into 32 ms silero frames
        out.extend(framer.push(stream[i : i + 640]))
    assert [len(f) for f in out] == [1024] * 5
    assert b"".join(out) == stream[:5120]
    assert framer.pending_bytes == 0
    assert framer.push(b"\1\2") == [] and framer.pending_bytes == 2


# The end measured from where the voice stopped: real sound, 20 ms frames of 320 samples.

TRIM = EndpointerSettings(
    speech_start_ms=100,  # 5 frames
    speech_start_ratio=1.0,
    end_silence_ms=200,  # 10 frames
    end_trim_ms=100,  # 5 frames
    pre_roll_ms=0,
    no_speech_timeout_s=None,
)
SAMPLES = FRAME_BYTES // 2


def voice(samples: int = SAMPLES) -> np.ndarray:
    return (3000 * np.sin(np.arange(samples) * 2 * np.pi * 220 / 16000)).astype("<i2")


def noise(rms: float, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, rms, samples).astype("<i2")


def end_index(ep: Endpointer, frames: list[tuple[np.ndarray, bool]]) -> int | None:
    """Index of the frame on which the utterance ended."""
    for i, (pcm, speech) in enumerate(frames):
        if any(isinstance(e, SpeechEnded) for e in ep.push(pcm.tobytes(), speech)):
            return i
    return None


def test_the_vads_hangover_counts_as_silence() -> None:
    """The VAD says speech for 3 frames after the voice stopped: the end comes 10 frames after
    the voice stopped, not 10 frames after the VAD noticed."""
    silent = np.zeros(SAMPLES, dtype="<i2")
    frames = [(silent, False)] * 5 + [(voice(), True)] * 10 + [(silent, True)] * 3 + [(silent, False)] * 20
    assert end_index(Endpointer(TRIM, FRAME_BYTES), frames) == 14 + 10
    untrimmed = EndpointerSettings(**{**TRIM.__dict__, "end_trim_ms": 0})
    assert end_index(Endpointer(untrimmed, FRAME_BYTES), frames) == 14 + 3 + 10


def test_the_quiet_end_of_the_last_loud_frame_counts_too() -> None:
    silent = np.zeros(SAMPLES, dtype="<i2")
    half = np.concatenate([voice(SAMPLES // 2), np.zeros(SAMPLES // 2, dtype="<i2")])
    frames = [(silent, False)] * 5 + [(voice(), True)] * 9 + [(half, True)] + [(silent, False)] * 20
    # 10 ms of the half frame + 9 frames of 20 ms = 190 ms: the 10th silent frame ends it.
    assert end_index(Endpointer(TRIM, FRAME_BYTES), frames) == 14 + 10


def test_a_quiet_run_longer_than_end_trim_ms_is_a_soft_voice() -> None:
    """400 ms of quiet 'speech' is not a hangover: at most end_trim_ms of it counts as silence."""
    silent = np.zeros(SAMPLES, dtype="<i2")
    frames = [(silent, False)] * 5 + [(voice(), True)] * 10 + [(silent, True)] * 20 + [(silent, False)] * 20
    end = end_index(Endpointer(TRIM, FRAME_BYTES), frames)
    assert end is not None and 34 + 5 <= end <= 34 + 10


def test_silence_counts_from_the_voice_across_a_flicker_of_the_vad() -> None:
    """Silero's verdict may bounce back to speech for a quiet frame after the voice stopped."""
    silent = np.zeros(SAMPLES, dtype="<i2")
    flicker = [(silent, True), (silent, False), (silent, True)] + [(silent, False)] * 20
    frames = [(silent, False)] * 5 + [(voice(), True)] * 10 + flicker
    assert end_index(Endpointer(TRIM, FRAME_BYTES), frames) == 14 + 10


def test_the_end_waits_for_the_vad_to_say_non_speech() -> None:
    silent = np.zeros(SAMPLES, dtype="<i2")
    frames = [(voice(), True)] * 10 + [(silent, False)] * 6 + [(silent, True)] * 5 + [(silent, False)] * 3
    # 120 ms heard + 80 ms of hangover reach 200 ms on a frame the VAD calls speech: the end comes
    # with the next non-speech frame.
    assert end_index(Endpointer(TRIM, FRAME_BYTES), frames) == 9 + 6 + 5 + 1


def test_room_noise_is_quiet_once_the_floor_is_learnt() -> None:
    room = noise(500)
    hangover = [(noise(500, seed=i), True) for i in range(3)]
    tail = [(noise(500, seed=10 + i), False) for i in range(20)]
    learnt = [(noise(500, seed=30 + i), False) for i in range(5)] + [(voice() + room, True)] * 10
    assert end_index(Endpointer(TRIM, FRAME_BYTES), learnt + hangover + tail) == 14 + 10
    # Never heard the room: the noise counts as voice, and nothing is trimmed (the safe side).
    unheard = [(voice() + room, True)] * 10
    assert end_index(Endpointer(TRIM, FRAME_BYTES), unheard + hangover + tail) == 9 + 3 + 10


def test_the_floor_is_kept_across_utterances() -> None:
    ep = Endpointer(TRIM, FRAME_BYTES)
    for i in range(5):
        ep.push(noise(500, seed=i).tobytes(), False)
    floor = ep.gate.floor
    assert floor is not None and 400 < floor < 600
    ep.reset()
    assert ep.gate.floor == floor


def test_end_early_ends_inside_a_frame_that_is_still_being_filled() -> None:
    silent = np.zeros(SAMPLES, dtype="<i2")
    ep = Endpointer(TRIM, FRAME_BYTES)
    for pcm, speech in [(silent, False)] * 5 + [(voice(), True)] * 10:
        ep.push(pcm.tobytes(), speech)
    assert ep.end_early(b"\0" * 100) == []  # the VAD has not heard silence yet
    for _ in range(9):
        assert not any(isinstance(e, SpeechEnded) for e in ep.push(silent.tobytes(), False))
    # 180 ms heard: 10 ms more of a quiet partial frame is not enough, 20 ms is.
    assert ep.end_early(bytes(SAMPLES)) == []
    assert ep.end_early(voice().tobytes()) == []  # loud: the user is talking again
    assert ep.end_early(bytes(FRAME_BYTES)) == [SpeechEnded("silence")]
    assert ep.done


def test_end_early_is_off_without_trimming() -> None:
    settings = EndpointerSettings(**{**TRIM.__dict__, "end_trim_ms": 0})
    ep = Endpointer(settings, FRAME_BYTES)
    for pcm, speech in [(voice(), True)] * 5 + [(np.zeros(SAMPLES, dtype="<i2"), False)] * 9:
        ep.push(pcm.tobytes(), speech)
    assert ep.end_early(bytes(FRAME_BYTES * 2)) == []


def test_a_gate_passed_in_outlives_the_endpointer() -> None:
    """The assistant keeps one noise floor for the room: the next utterance starts knowing it."""
    gate = LoudnessGate()
    first = Endpointer(TRIM, FRAME_BYTES, gate=gate)
    for i in range(5):
        first.push(noise(500, seed=i).tobytes(), False)
    second = Endpointer(TRIM, FRAME_BYTES, gate=gate)
    assert second.gate is gate and gate.floor is not None and 400 < gate.floor < 600


# Pauses inside an utterance (speculate_after_ms): SpeechPaused / SpeechResumed.

SPECULATE = EndpointerSettings(**{**SETTINGS.__dict__, "speculate_after_ms": 100})  # 5 frames of 10


def marks(events: list[tuple[int, object]]) -> list[tuple[int, object]]:
    """The events that are not audio."""
    return [(i, e) for i, e in events if not isinstance(e, SpeechAudio)]


def test_a_pause_is_told_once_when_the_silence_reaches_speculate_after_ms() -> None:
    ep = Endpointer(SPECULATE, FRAME_BYTES)
    events = run(ep, [True] * 5 + [False] * 12)
    assert marks(events) == [
        (4, SpeechStarted(b"".join(frame(i) for i in range(5)))),
        (9, SpeechPaused(100)),
        (14, SpeechEnded("silence")),
    ]
    assert not ep.paused  # over with the utterance


def test_the_voice_coming_back_resumes_and_the_next_pause_is_told_again() -> None:
    ep = Endpointer(SPECULATE, FRAME_BYTES)
    verdicts = [True] * 5 + [False] * 7 + [True] * 3 + [False] * 3 + [True] + [False] * 10
    events = run(ep, verdicts)
    assert [(i, type(e)) for i, e in marks(events)] == [
        (4, SpeechStarted),
        (9, SpeechPaused),
        (12, SpeechResumed),
        (23, SpeechPaused),  # the 3-frame gap (15..17) was too short to be a pause
        (28, SpeechEnded),
    ]
    assert events[[i for i, _ in events].index(12) + 1][1] == SpeechResumed(140)  # 7 silent frames
    # The audio of the frame that brought the voice back comes before the resume.
    kinds_at_12 = [type(e) for i, e in events if i == 12]
    assert kinds_at_12 == [SpeechAudio, SpeechResumed]


def test_pauses_keep_the_audio_conserved() -> None:
    ep = Endpointer(SPECULATE, FRAME_BYTES)
    verdicts = [False] * 4 + [True] * 5 + ([False] * 6 + [True] * 4) * 3 + [False] * 10
    events = run(ep, verdicts)
    start = events[0][1]
    assert isinstance(start, SpeechStarted)
    audio = start.audio + b"".join(e.audio for _, e in events if isinstance(e, SpeechAudio))
    end_index = events[-1][0]
    assert audio == b"".join(frame(i) for i in range(1, end_index + 1))  # 3 frames of pre-roll
    kinds = [type(e) for _, e in marks(events)]
    assert kinds == [SpeechStarted] + [SpeechPaused, SpeechResumed] * 3 + [SpeechPaused, SpeechEnded]


def test_no_pause_events_without_speculate_after_ms() -> None:
    ep = Endpointer(SETTINGS, FRAME_BYTES)
    events = run(ep, [True] * 5 + [False] * 7 + [True] * 3 + [False] * 10)
    assert [type(e) for _, e in marks(events)] == [SpeechStarted, SpeechEnded]


def test_no_pause_on_the_frame_that_ends_the_utterance() -> None:
    settings = EndpointerSettings(**{**SETTINGS.__dict__, "speculate_after_ms": 190})  # 10 frames, as the end
    events = run(Endpointer(settings, FRAME_BYTES), [True] * 5 + [False] * 10)
    assert [type(e) for _, e in marks(events)] == [SpeechStarted, SpeechEnded]


def test_the_hangover_counts_towards_the_pause_and_a_quiet_flicker_does_not_resume() -> None:
    settings = EndpointerSettings(**{**TRIM.__dict__, "speculate_after_ms": 100})  # 5 frames
    silent = np.zeros(SAMPLES, dtype="<i2")
    frames = [(silent, False)] * 5 + [(voice(), True)] * 10 + [(silent, True)] * 3 + [(silent, False)] * 3
    frames += [(silent, True)] + [(silent, False)] * 10  # a flicker of the VAD on a quiet frame
    ep = Endpointer(settings, FRAME_BYTES)
    found = [(i, e) for i, (pcm, speech) in enumerate(frames) for e in ep.push(pcm.tobytes(), speech)]
    # The voice stopped after frame 14; the VAD said speech for 3 more frames: 5 frames of silence
    # are reached on frame 19, the second non-speech frame.
    assert [(i, e) for i, e in marks(found) if not isinstance(e, SpeechStarted)] == [
        (19, SpeechPaused(100)),
        (24, SpeechEnded("silence")),
    ]


def test_pause_early_decides_the_pause_inside_a_frame_being_filled() -> None:
    settings = EndpointerSettings(**{**TRIM.__dict__, "speculate_after_ms": 90})
    silent = np.zeros(SAMPLES, dtype="<i2")
    ep = Endpointer(settings, FRAME_BYTES)
    for pcm, speech in [(silent, False)] * 5 + [(voice(), True)] * 10:
        ep.push(pcm.tobytes(), speech)
    assert ep.pause_early(bytes(FRAME_BYTES)) == []  # the VAD has not heard silence yet
    for _ in range(4):
        assert marks([(0, e) for e in ep.push(silent.tobytes(), False)]) == []
    # 80 ms heard: 5 ms more is not enough, a loud partial frame is not silence, 10 ms is.
    assert ep.pause_early(bytes(160)) == []
    assert ep.pause_early(voice().tobytes()) == []
    assert ep.pause_early(bytes(SAMPLES)) == [SpeechPaused(90)]
    assert ep.paused
    assert ep.pause_early(bytes(FRAME_BYTES)) == []  # once per pause
    assert marks([(0, e) for e in ep.push(silent.tobytes(), False)]) == []  # not told again by the frame


def test_end_sooner_ends_the_current_pause_at_the_shorter_silence() -> None:
    settings = EndpointerSettings(**{**SETTINGS.__dict__, "speculate_after_ms": 60})  # 3 frames; end 10
    ep = Endpointer(settings, FRAME_BYTES)
    ep.end_sooner(80)  # no pause yet: ignored
    events = run(ep, [True] * 5 + [False] * 3)
    assert isinstance(events[-1][1], SpeechPaused)
    ep.end_sooner(120)  # 6 frames
    ends = [i for i in range(8, 20) if any(isinstance(e, SpeechEnded) for e in ep.push(frame(i), False))]
    assert ends[0] == 10  # frames 5..10: 6 silent frames


def test_end_sooner_is_forgotten_when_the_voice_comes_back() -> None:
    settings = EndpointerSettings(**{**SETTINGS.__dict__, "speculate_after_ms": 60})
    ep = Endpointer(settings, FRAME_BYTES)
    run(ep, [True] * 5 + [False] * 3)
    ep.end_sooner(80)
    events = [e for i in range(8, 30) for e in ep.push(frame(i), i == 8 or i == 9)]
    assert [type(e) for e in events if not isinstance(e, SpeechAudio)] == [SpeechResumed, SpeechPaused, SpeechEnded]
    assert ep.frames_seen == 20  # 10 + 10 silent frames from frame 10: the whole end_silence_ms


def test_end_early_honours_end_sooner() -> None:
    settings = EndpointerSettings(**{**TRIM.__dict__, "speculate_after_ms": 60})
    silent = np.zeros(SAMPLES, dtype="<i2")
    ep = Endpointer(settings, FRAME_BYTES)
    for pcm, speech in [(voice(), True)] * 5 + [(silent, False)] * 3:
        ep.push(pcm.tobytes(), speech)
    assert ep.paused
    assert ep.end_early(bytes(FRAME_BYTES)) == []  # 80 ms of 200
    ep.end_sooner(70)
    assert ep.end_early(bytes(SAMPLES)) == [SpeechEnded("silence")]


@pytest.mark.parametrize("key", ["speculate_after_ms", "end_silence_short_ms"])
def test_speculation_silences_must_be_shorter_than_the_end(key: str) -> None:
    with pytest.raises(SettingsError, match=f"{key}: must be less than end_silence_ms \\(700\\), got 700"):
        EndpointerSettings(**{key: 700})
    EndpointerSettings(**{key: 699})


def test_the_cross_check_reports_every_problem_of_the_class() -> None:
    with pytest.raises(SettingsError) as caught:
        EndpointerSettings(speculate_after_ms=900, pre_roll_ms=-1)
    assert [key for key, _ in caught.value.problems] == ["pre_roll_ms", "speculate_after_ms"]
