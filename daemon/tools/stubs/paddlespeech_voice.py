"""The PaddleSpeech stand-in's voice: espeak-ng, resampled to the asked rate, sentence by sentence,
cut into PaddleSpeech-sized chunks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct

import numpy as np
import soxr

CHUNK_SAMPLES = 36 * 300
"""A full chunk: voc_block 36 mel frames x hop 300 = 10 800 samples (21 600 bytes, 0.45 s at 24 kHz)."""
HOP_SAMPLES = 300
"""The last chunk of a sentence is r x 300 samples."""
ESPEAK_TIMEOUT_S = 20.0

_SENTENCE_SPLIT = re.compile(r"(?<=[。！？；：，、!?;:,])|(?<=\.)(?=\s|$)")
"""PaddleSpeech synthesizes sentence by sentence (merge_sentences=False); split after punctuation."""
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def split_chunks(pcm: bytes) -> list[bytes]:
    size = CHUNK_SAMPLES * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def sentences(text: str) -> list[str]:
    """Sentences that can be spoken; text with no letter or digit yields none (hence no audio)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if any(ch.isalnum() for ch in s)]


async def espeak_pcm(text: str, sample_rate: int) -> bytes:
    """Speak ``text`` with espeak-ng and return int16 mono PCM at ``sample_rate``.

    Text with CJK characters uses ``cmn-latn-pinyin`` (Debian's ``cmn`` voice reads hanzi as
    English words); anything else ``en-us``. The text goes through stdin, so a text that
    starts with "-" cannot be taken for an option.
    """
    voice = "cmn-latn-pinyin" if _CJK.search(text) else "en-us"
    process = await asyncio.create_subprocess_exec(
        "espeak-ng",
        "-v",
        voice,
        "--stdout",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(ESPEAK_TIMEOUT_S):
            wav, err = await process.communicate(text.encode("utf-8"))
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({process.returncode}): {err.decode(errors='replace').strip()}")
    if not wav:
        return b""
    rate, pcm = _parse_wav(wav)
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
    if rate != sample_rate and samples.size:
        samples = soxr.resample(samples, rate, sample_rate)
    return samples.astype("<i2").tobytes()


def _parse_wav(wav: bytes) -> tuple[int, bytes]:
    """(rate, data) of a mono 16-bit WAV; espeak's --stdout header has placeholder sizes."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not write a WAV file")
    pos, rate = 12, 0
    while pos + 8 <= len(wav):
        kind, size = wav[pos : pos + 4], struct.unpack("<I", wav[pos + 4 : pos + 8])[0]
        body = pos + 8
        if kind == b"fmt ":
            fmt, channels, rate = struct.unpack("<HHI", wav[body : body + 8])
            bits = struct.unpack("<H", wav[body + 14 : body + 16])[0]
            if (fmt, channels, bits) != (1, 1, 16):
                raise RuntimeError(f"espeak-ng wrote an unexpected WAV format {(fmt, channels, bits)}")
        elif kind == b"data":
            if not rate:
                raise RuntimeError("espeak-ng WAV has data before fmt")
            return rate, wav[body : min(len(wav), body + size)]
        pos = body + size + (size & 1)
    raise RuntimeError("espeak-ng WAV has no data chunk")
