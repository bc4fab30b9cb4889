"""pocketsphinx keyphrase search: any English phrase whose words are in the CMU dictionary.

The acoustic model and dictionary come with the pocketsphinx wheel (US English). Several
phrases are spotted at once (a keyphrase list). ``threshold`` is pocketsphinx's
``kws_threshold`` for every phrase (default 1e-20): smaller values (1e-30, 1e-40) detect more
and wake falsely more, larger ones (1e-10) the opposite. Longer phrases (three or four
syllables) work best. The decoder costs about 1 ms of CPU per 30 ms of audio, so it runs on the
event loop; building it takes some 0.15 s.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from hardware.hotword.errors import HotwordError, missing_library
from hardware.pcm import MIC_RATE, PcmFramer

log = structlog.get_logger(__name__)

ENGINE = "pocketsphinx"
DEFAULT_THRESHOLD = 1e-20


def normalise(phrase: str) -> str:
    """The phrase as the decoder spells it: lower case, single spaces."""
    return " ".join(phrase.lower().split())


class PocketsphinxHotword:
    """The ``HotwordEngine`` port on a pocketsphinx keyphrase search (16 kHz mono int16)."""

    lag_s = 0.09
    """How long after the wake word ends it fires (median 90-100 ms, ``moss-voice bench hotword``)."""

    def __init__(
        self,
        phrases: Sequence[str],
        *,
        threshold: float | None = None,
        model_dir: str | None = None,
    ) -> None:
        self.phrases = tuple(phrases)
        if not self.phrases:
            raise HotwordError(f"hotword engine {ENGINE!r}: no phrases to listen for")
        if model_dir is not None:
            raise HotwordError(
                f"hotword engine {ENGINE!r} uses the English model in its wheel; model_dir {model_dir!r} is not used: "
                "remove it"
            )
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        if not self.threshold > 0:
            raise HotwordError(f"hotword engine {ENGINE!r}: threshold {threshold} must be positive (e.g. 1e-20)")
        self._spelled = {normalise(p): p for p in self.phrases}
        if "" in self._spelled:
            raise HotwordError(f"hotword engine {ENGINE!r}: an empty phrase in {list(self.phrases)!r}")
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise missing_library(ENGINE, "pocketsphinx") from exc
        self._decoder = self._build(Decoder)
        self._framer = PcmFramer(2)
        self._decoder.start_utt()
        log.info("hotword_model_loaded", engine=ENGINE, phrases=list(self.phrases), threshold=self.threshold)

    def _build(self, decoder_class: Any) -> Any:
        """A decoder whose only search is the keyphrase list (no language model is loaded)."""
        with tempfile.TemporaryDirectory(prefix="moss-voice-kws-") as tmp:
            kws = Path(tmp) / "keyphrases.txt"
            kws.write_text("".join(f"{p} /{self.threshold:g}/\n" for p in self._spelled), encoding="utf-8")
            try:
                decoder = decoder_class(samprate=MIC_RATE, kws=str(kws), logfn=os.devnull)
            except (RuntimeError, ValueError) as exc:
                raise HotwordError(
                    f"hotword engine {ENGINE!r}: cannot build a keyphrase search for {list(self.phrases)!r}: {exc}"
                ) from exc
        for spelled, phrase in self._spelled.items():
            unknown = [word for word in spelled.split() if decoder.lookup_word(word) is None]
            if unknown:
                raise HotwordError(
                    f"hotword engine {ENGINE!r}, phrase {phrase!r}: not in the English dictionary: {', '.join(unknown)}"
                )
        return decoder

    def process(self, pcm: bytes, speech: bool) -> str | None:
        """Feed audio; the phrase detected, if one ended in it (``speech`` is not used)."""
        whole = self._framer.feed(pcm)
        if not whole:
            return None
        self._decoder.process_raw(whole, False, False)
        hyp = self._decoder.hyp()
        if hyp is None:
            return None
        self.reset()
        return self._phrase_of(hyp.hypstr)

    def _phrase_of(self, hypothesis: str) -> str:
        """The configured phrase the decoder reported (the last one if it reports several)."""
        spoken = normalise(hypothesis)
        for spelled, phrase in self._spelled.items():
            if spoken.endswith(spelled):
                return phrase
        return self.phrases[0]

    def reset(self) -> None:
        self._decoder.end_utt()
        self._decoder.start_utt()
        self._framer.close()

    async def aclose(self) -> None:
        self._decoder.end_utt()
