"""WAV files: reading any common RIFF/WAVE file into float samples, converting to the 16 kHz mono
int16 a microphone delivers, and writing 16-bit mono files (whole, or a header patched as a file
grows). The devices that play and record files are ``wav_mic.WavMicrophone`` and
``wav_speaker.WavSpeaker``.
"""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path

import numpy as np

from hardware.errors import HardwareError
from hardware.pcm import MIC_RATE, to_int16

_FORMAT_PCM = 0x0001
_FORMAT_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE
HEADER_BYTES = 44
"""The plain RIFF header ``wav_header`` writes: the data start at this offset."""
MAX_DATA_BYTES = 0xFFFFFFFF - 36


class WavProblem(Exception):
    """Why a WAV file cannot be used; callers add the device or file name."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a RIFF/WAVE file into float32 samples in [-1, 1), shape ``(frames, channels)``.

    Supports integer PCM of 8, 16, 24 and 32 bits and IEEE float of 32 and 64 bits, plain or
    WAVE_FORMAT_EXTENSIBLE. A data size larger than the file (a WAV streamed to a pipe, or one
    whose writer was killed) means "up to the end of the file". Raises HardwareError naming the
    path and the reason.
    """
    try:
        return decode_wav(path)
    except WavProblem as exc:
        raise HardwareError(f"WAV file '{path}': {exc}") from exc


def write_wav(path: str | Path, samples: np.ndarray | bytes, rate: int) -> Path:
    """Write int16 mono samples (an array, or little-endian bytes) as a 16-bit mono WAV file."""
    pcm = samples if isinstance(samples, bytes) else np.asarray(samples).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return Path(path)


def decode_wav(path: str | Path) -> tuple[np.ndarray, int]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise WavProblem("file not found") from exc
    except IsADirectoryError as exc:
        raise WavProblem("is a directory") from exc
    except OSError as exc:
        raise WavProblem(f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise WavProblem("not a RIFF/WAVE file")

    fmt: bytes | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]  # clipped at the end of the file
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = body
            break  # data runs to the end when its size is bogus; nothing after it matters
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavProblem("no valid 'fmt ' chunk")
    if data is None:
        raise WavProblem("no 'data' chunk")

    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise WavProblem("truncated WAVE_FORMAT_EXTENSIBLE header")
        (tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise WavProblem(f"bad header ({channels} channels at {rate} Hz)")
    sample_bytes = bits // 8
    if bits % 8 or block_align != channels * sample_bytes:
        raise WavProblem(f"unsupported sample layout ({bits} bits, block_align {block_align})")

    usable = len(data) - len(data) % block_align
    buf = data[:usable]
    if tag == _FORMAT_PCM and bits == 8:
        samples = (np.frombuffer(buf, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _FORMAT_PCM and bits == 16:
        samples = np.frombuffer(buf, "<i2").astype(np.float32) / 32768.0
    elif tag == _FORMAT_PCM and bits == 24:
        b = np.frombuffer(buf, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif tag == _FORMAT_PCM and bits == 32:
        samples = (np.frombuffer(buf, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    elif tag == _FORMAT_FLOAT and bits in (32, 64):
        samples = np.frombuffer(buf, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        kind = {_FORMAT_PCM: "PCM", _FORMAT_FLOAT: "float"}.get(tag, f"format tag 0x{tag:04x}")
        raise WavProblem(f"unsupported encoding ({kind}, {bits} bits)")
    return samples.reshape(-1, channels), rate


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mix ``(frames, channels)`` float samples to mono (mean), resample to 16 kHz with soxr (HQ),
    and round to int16 with clipping. 16-bit mono 16 kHz input comes out bit-exact."""
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate != MIC_RATE and len(mono):
        import soxr  # a project dependency; imported here like the other vendor libraries

        mono = soxr.resample(np.ascontiguousarray(mono, dtype=np.float32), rate, MIC_RATE)
    return to_int16(mono)  # float32 times 2**15 is exact: the same samples as in float64, half the memory


def load_wav_16k_mono(path: str | Path) -> np.ndarray:
    """The samples a WavMicrophone delivers for ``path``: int16, mono, 16 kHz."""
    samples, rate = read_wav(path)
    return to_mono_16k(samples, rate)


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        _FORMAT_PCM,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data_bytes,
    )


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
