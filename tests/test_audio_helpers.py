from __future__ import annotations

import numpy as np

from daemon.earcon import failure_earcon
from daemon.resampled_tts import ResampledTts
from tests.fakes import FakeTts


def test_the_earcon_is_short_audible_and_click_free() -> None:
    for rate in (16000, 24000, 48000):
        pcm = np.frombuffer(failure_earcon(rate), dtype="<i2")
        assert 0.2 < len(pcm) / rate < 0.5
        assert np.abs(pcm).max() > 3000
        assert abs(int(pcm[0])) < 100 and abs(int(pcm[-1])) < 100


async def test_resampled_tts_converts_to_the_speaker_rate_and_passes_through_when_equal() -> None:
    inner = FakeTts(rate=24000)
    text = "x" * 2400  # FakeTts: 2 bytes per character -> 2400 samples = 0.1 s at 24 kHz
    async with ResampledTts(inner, 48000).synthesize(text) as audio:
        out = b"".join([chunk async for chunk in audio])
    assert abs(len(out) // 2 - 4800) <= 2 and len(out) % 2 == 0
    async with ResampledTts(inner, 24000).synthesize(text) as audio:
        same = b"".join([chunk async for chunk in audio])
    assert len(same) == 4800
    assert await ResampledTts(inner, 48000).sample_rate() == 48000


def test_a_wav_earcon_is_read_once_and_resampled(tmp_path) -> None:
    import wave

    from daemon.earcon import earcon_from_setting, listening_earcon

    path = tmp_path / "ding.wav"
    tone = (np.sin(2 * np.pi * 1000 * np.arange(4410) / 44100) * 10000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.repeat(tone, 2).tobytes())
    earcon = earcon_from_setting(str(path), listening_earcon)
    assert earcon is not None
    pcm = np.frombuffer(earcon(16000), dtype="<i2")
    assert abs(len(pcm) - 1600) <= 2 and 9000 < np.abs(pcm).max() <= 10100
    assert earcon_from_setting("off", listening_earcon) is None
    assert earcon_from_setting("builtin", listening_earcon) is listening_earcon
