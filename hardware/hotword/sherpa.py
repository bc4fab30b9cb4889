"""The sherpa-onnx keyword spotter: open-vocabulary wake words (你好摩斯) from a model the user downloads.

The model is a streaming transducer (encoder, decoder and joiner ONNX files and ``tokens.txt``,
docs/hotword-sherpa.md). Wake phrases are written as the user says them, in hanzi, and spelt in the
model's tokens here (hardware/hotword/keyword_tokens.py), or written in tokens directly.

sherpa-onnx ends the process, rather than raising, when a model lacks the metadata it expects or
when a keyword has a token the model does not know. Everything it would exit on is checked here
first, so a bad configuration is a ``SherpaModelError`` naming the file or phrase at fault.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hardware.hotword.errors import HotwordError
from hardware.hotword.keyword_tokens import KeywordSpellingError, load_tokens, spell
from hardware.hotword.onnx_meta import NotOnnxError, read_metadata

log = structlog.get_logger()

SAMPLE_RATE = 16000
DEFAULT_THRESHOLD = 0.25
"""sherpa-onnx's own default ``keywords_threshold``: the mean probability of a keyword's tokens
needed to fire. Higher: fewer false wakes, more missed ones."""

TOKENS_FILE = "tokens.txt"
PARTS = ("encoder", "decoder", "joiner")

TRANSDUCER_TYPES = frozenset({"zipformer2", "zipformer", "conformer", "ebranchformer", "lstm"})
"""``model_type`` values sherpa-onnx's streaming transducer loader knows."""

ZIPFORMER2_KEYS = (
    "encoder_dims",
    "query_head_dims",
    "value_head_dims",
    "num_heads",
    "num_encoder_layers",
    "cnn_module_kernels",
    "left_context_len",
    "T",
    "decode_chunk_len",
)
"""Encoder metadata a zipformer2 model (every published keyword-spotting model) must carry."""

DECODER_KEYS = ("vocab_size", "context_size")

_SELF_CHECK_S = 0.5
"""Silence decoded once at start-up, so a model whose graphs do not fit together fails here."""


class SherpaModelError(HotwordError):
    """The sherpa-onnx hotword engine cannot start: no model directory, a missing or broken model
    file, a phrase the model cannot spell, a bad threshold, or sherpa-onnx not installed."""


@dataclass(frozen=True)
class SherpaModelFiles:
    """The four files of a keyword-spotting model directory."""

    encoder: Path
    decoder: Path
    joiner: Path
    tokens: Path

    @classmethod
    def find(cls, model_dir: Path) -> SherpaModelFiles:
        """Pick the files by the names the published models use.

        ``tokens.txt``, and for each part a file ``<part>*.onnx`` (``encoder.onnx``,
        ``encoder-epoch-12-avg-2-chunk-16-left-64.onnx``, ``...int8.onnx``). When several match, a
        full-precision file is preferred to an ``.int8.`` one, then the first by name.
        """
        if not model_dir.is_dir():
            what = "does not exist" if not model_dir.exists() else "is not a directory"
            raise SherpaModelError(f"sherpa-onnx model directory {str(model_dir)!r} {what}")
        tokens = model_dir / TOKENS_FILE
        if not tokens.is_file():
            raise SherpaModelError(f"sherpa-onnx model directory {str(model_dir)!r} has no {TOKENS_FILE}")
        found: dict[str, Path] = {}
        for part in PARTS:
            matches = sorted(p for p in model_dir.glob(f"{part}*.onnx") if p.is_file())
            if not matches:
                raise SherpaModelError(f"sherpa-onnx model directory {str(model_dir)!r} has no {part}*.onnx file")
            found[part] = min(matches, key=lambda p: (".int8." in p.name, p.name))
        return cls(encoder=found["encoder"], decoder=found["decoder"], joiner=found["joiner"], tokens=tokens)


def check_model(files: SherpaModelFiles) -> dict[str, int]:
    """Refuse what sherpa-onnx would exit on or misread; return the token table."""
    try:
        table = load_tokens(files.tokens)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SherpaModelError(f"sherpa-onnx model file {str(files.tokens)!r} is not a token table: {exc}") from exc
    metas = {}
    for part in PARTS:
        path: Path = getattr(files, part)
        try:
            metas[part] = read_metadata(path)
        except (OSError, NotOnnxError) as exc:
            raise SherpaModelError(
                f"sherpa-onnx {part} {str(path)!r} is not an ONNX model ({exc}); download the model again"
            ) from exc
    encoder_meta = metas["encoder"]
    model_type = encoder_meta.get("model_type", "")
    if model_type not in TRANSDUCER_TYPES:
        raise SherpaModelError(
            f"sherpa-onnx encoder {str(files.encoder)!r} is not a streaming transducer encoder"
            f" (metadata model_type={model_type!r}); use a keyword-spotting model (docs/hotword-sherpa.md)"
        )
    required = {"encoder": ZIPFORMER2_KEYS if model_type == "zipformer2" else (), "decoder": DECODER_KEYS}
    for part, keys in required.items():
        missing = [k for k in keys if k not in metas[part]]
        if missing:
            raise SherpaModelError(
                f"sherpa-onnx {part} {str(getattr(files, part))!r} lacks the metadata {', '.join(missing)};"
                f" it is not the {part} of a keyword-spotting model"
            )
    vocab_size = metas["decoder"]["vocab_size"]
    if vocab_size != str(max(table.values()) + 1):
        raise SherpaModelError(
            f"sherpa-onnx {TOKENS_FILE} {str(files.tokens)!r} has {max(table.values()) + 1} tokens but the decoder"
            f" {str(files.decoder)!r} expects {vocab_size}: the files come from different models"
        )
    return table


def keyword_lines(phrases: Sequence[str], table: dict[str, int]) -> list[str]:
    """One sherpa-onnx keyword line per phrase, tagged ``@<index>`` to find the phrase again."""
    lines = []
    for index, phrase in enumerate(phrases):
        try:
            tokens = spell(phrase, table)
        except KeywordSpellingError as exc:
            raise SherpaModelError(f"sherpa-onnx hotword: cannot spell the phrase {phrase!r}: {exc}") from exc
        lines.append(f"{' '.join(tokens)} @{index}")
    return lines


class SherpaOnnxHotword:
    """``states.ports.HotwordEngine`` on sherpa-onnx's ``KeywordSpotter``.

    ``phrases``: hanzi (``"你好摩斯"``) or the model's tokens separated by spaces
    (``"n ǐ h ǎo m ó s ī"``); ``process`` returns the phrase as written here. ``threshold``
    (0-1, default ``DEFAULT_THRESHOLD``): sherpa-onnx's ``keywords_threshold``. ``model_dir``: the
    model directory (``SherpaModelFiles.find``). ``num_threads``: onnxruntime's threads (1 leaves
    the robot's other core to the rest of the daemon). Building it loads the model (a fraction of
    a second): do it before the audio starts, or in a thread.

    A phrase that begins another (你好 and 你好摩斯) fires as soon as it is said, so the longer one
    never does: sherpa-onnx resets the stream after each detection.
    """

    def __init__(
        self,
        phrases: Sequence[str],
        *,
        threshold: float | None = None,
        model_dir: str | None = None,
        num_threads: int = 1,
    ) -> None:
        if isinstance(phrases, str) or not phrases:
            raise SherpaModelError(f"sherpa-onnx hotword: phrases must be a non-empty list, got {phrases!r}")
        self.phrases: tuple[str, ...] = tuple(phrases)
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        if not 0 < self.threshold < 1:
            raise SherpaModelError(f"sherpa-onnx hotword: threshold must be between 0 and 1, got {self.threshold}")
        if not model_dir:
            raise SherpaModelError(
                "sherpa-onnx hotword: wake.hotword.model_dir is not set; it must name the directory of a"
                " keyword-spotting model (docs/hotword-sherpa.md)"
            )
        self.files = SherpaModelFiles.find(Path(model_dir).expanduser())
        table = check_model(self.files)
        self.keywords: tuple[str, ...] = tuple(keyword_lines(self.phrases, table))
        """sherpa-onnx keyword lines, one per phrase: its tokens and ``@<index>``."""
        self._keywords = "/".join(self.keywords)
        self._spotter = self._load(num_threads)
        self._self_check()
        self._stream: Any = self._new_stream()
        log.info(
            "hotword_engine_ready",
            engine="sherpa-onnx",
            phrases=list(self.phrases),
            keywords=list(self.keywords),
            encoder=self.files.encoder.name,
            threshold=self.threshold,
        )

    def process(self, pcm: bytes, speech: bool) -> str | None:
        """Feed 16 kHz mono int16 audio; the phrase whose keyword ended in it, if any."""
        if self._stream is None:
            raise RuntimeError("the sherpa-onnx hotword engine is closed")
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        self._stream.accept_waveform(SAMPLE_RATE, samples)
        detected: str | None = None
        while self._spotter.is_ready(self._stream):
            self._spotter.decode_stream(self._stream)
            keyword = self._spotter.get_result(self._stream)
            if keyword:
                self._spotter.reset_stream(self._stream)
                phrase = self.phrases[int(keyword)]
                log.info("hotword_detected", engine="sherpa-onnx", word=phrase)
                detected = detected or phrase
        return detected

    def reset(self) -> None:
        """Start again on a fresh stream: no audio, no partial keyword."""
        if self._stream is not None:
            self._stream = self._new_stream()

    async def aclose(self) -> None:
        self._stream = None
        self._spotter = None

    def _load(self, num_threads: int) -> Any:
        try:
            import sherpa_onnx
        except ImportError as exc:
            raise SherpaModelError(
                "sherpa-onnx hotword: the Python module sherpa_onnx is missing: pip install 'moss-voice[hotword]'"
            ) from exc
        files = self.files
        try:
            return sherpa_onnx.KeywordSpotter(
                tokens=str(files.tokens),
                encoder=str(files.encoder),
                decoder=str(files.decoder),
                joiner=str(files.joiner),
                # The keywords go to each stream instead (_new_stream): a bad one is then an
                # error we can report, where a bad keywords file ends the process.
                keywords_file=os.devnull,
                keywords_threshold=self.threshold,
                num_threads=num_threads,
                sample_rate=SAMPLE_RATE,
            )
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise SherpaModelError(
                f"sherpa-onnx could not load the model in {str(files.encoder.parent)!r}: {exc}"
            ) from exc

    def _new_stream(self) -> Any:
        try:
            return self._spotter.create_stream(self._keywords)
        except ValueError as exc:  # checked against tokens.txt already; kept for a model that disagrees
            raise SherpaModelError(f"sherpa-onnx refused the keywords {self._keywords!r}: {exc}") from exc

    def _self_check(self) -> None:
        stream = self._new_stream()
        try:
            stream.accept_waveform(SAMPLE_RATE, np.zeros(int(SAMPLE_RATE * _SELF_CHECK_S), dtype=np.float32))
            while self._spotter.is_ready(stream):
                self._spotter.decode_stream(stream)
        except RuntimeError as exc:
            raise SherpaModelError(
                f"sherpa-onnx model in {str(self.files.encoder.parent)!r} fails on audio"
                f" (do its encoder, decoder and joiner belong together?): {exc}"
            ) from exc
