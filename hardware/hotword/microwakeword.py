"""microWakeWord (pymicro-wakeword): small TFLite wake word models, a few per cent of a core.

A phrase is a built-in model name (``okay_nabu``, ``hey_jarvis``, ``hey_mycroft``, ``alexa``) or
a model's ``.json`` file with its ``.tflite`` beside it (named by the json's ``model`` field).
A bare name is looked up in ``model_dir`` first (``<model_dir>/<name>.json``), then among the
built-in models; a relative ``.json`` path is taken relative to ``model_dir`` when one is given.

Several phrases share one feature extractor (the features do not depend on the model), and each
model runs on every window. ``threshold`` replaces every model's own probability cutoff (the
``micro.probability_cutoff`` of its json, 0.95 or so for the built-in ones); it must lie between
0 and 1.

The models are streaming networks: what they heard in the last second or two shifts their
score for the next word (on espeak-ng speech, "hey mycroft" right after "alexa" and "okay nabu"
scored 0.86 to 0.94 instead of 0.99). Resetting after each wake, as the daemon does, keeps the
next wake word from being judged against the last one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from hardware.hotword.errors import HotwordError, missing_library

log = structlog.get_logger(__name__)

ENGINE = "microwakeword"
BUILTIN_MODELS = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
"""The models shipped in the pymicro-wakeword wheel."""


class _ModelSpec:
    """A model's json, read and checked before the TFLite runtime sees the model.

    The runtime crashes the process on a model file that is not a TFLite flatbuffer, so every
    file is checked here first.
    """

    def __init__(self, phrase: str, json_path: Path) -> None:
        self.phrase = phrase
        self.json_path = json_path
        where = f"hotword engine {ENGINE!r}, phrase {phrase!r}: model file {str(json_path)!r}"
        try:
            config = json.loads(json_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HotwordError(f"{where} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HotwordError(f"{where} is not a readable JSON file: {exc}") from exc
        try:
            self.tflite = json_path.parent / str(config["model"])
            micro = config["micro"]
            self.cutoff = float(micro["probability_cutoff"])
            self.window = int(micro["sliding_window_size"])
            self.wake_word = str(config.get("wake_word", phrase))
            self.languages = [str(lang) for lang in config.get("trained_languages", [])]
        except (TypeError, KeyError, ValueError) as exc:
            raise HotwordError(
                f"{where} is not a microWakeWord model description "
                f"(it needs 'model', 'micro.probability_cutoff' and 'micro.sliding_window_size'): {exc!r}"
            ) from exc
        if not self.tflite.is_file():
            raise HotwordError(f"{where} names the model {str(self.tflite)!r}, which does not exist")


def resolve(phrase: str, model_dir: str | None) -> Path:
    """The json file of ``phrase`` (a built-in name, a name in ``model_dir``, or a path)."""
    base = Path(model_dir) if model_dir else None
    if phrase.endswith(".json") or "/" in phrase:
        path = Path(phrase).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    if base is not None and (base / f"{phrase}.json").is_file():
        return base / f"{phrase}.json"
    if phrase in BUILTIN_MODELS:
        return _package_dir() / "models" / f"{phrase}.json"
    where = f" or a {phrase}.json in {model_dir!r}" if model_dir else ""
    raise HotwordError(
        f"hotword engine {ENGINE!r}: unknown model {phrase!r}; built-in models: {', '.join(BUILTIN_MODELS)}"
        f"{where}, or the path of a model's .json file"
    )


def _package_dir() -> Path:
    try:
        import pymicro_wakeword
    except ImportError as exc:
        raise missing_library(ENGINE, "pymicro_wakeword") from exc
    return Path(pymicro_wakeword.__file__).parent


def _runtime_path() -> Path:
    """The TFLite C runtime bundled in the pymicro-wakeword wheel."""
    found = sorted((_package_dir() / "lib").glob("*tensorflowlite_c.*"))
    if not found:
        raise HotwordError(f"hotword engine {ENGINE!r}: the installed pymicro-wakeword has no TFLite runtime")
    return found[0]


def _check_flatbuffer(lib: Any, spec: _ModelSpec) -> None:
    """Let the runtime's verifier read the model once; it returns NULL for a broken file."""
    model = lib.TfLiteModelCreateFromFile(str(spec.tflite.resolve()).encode())
    if not model:
        raise HotwordError(
            f"hotword engine {ENGINE!r}, phrase {spec.phrase!r}: {str(spec.tflite)!r} is not a valid TFLite model"
        )
    lib.TfLiteModelDelete(model)


class _Detector:
    """One model and the phrase it reports."""

    def __init__(self, spec: _ModelSpec, model: Any, cutoff: float) -> None:
        self.phrase = spec.phrase
        self.model = model
        self.cutoff = cutoff

    def feed(self, features: Any) -> bool:
        """One feature window in; True when the model's mean probability passes the cutoff.

        On a detection the model is reset (0.2 ms), so it must hear the word again to fire again.
        """
        probability = self.model.process_streaming_prob(features)
        if probability is None or probability <= self.cutoff:
            return False
        self.model.reset()
        return True


class MicroWakeWordHotword:
    """The ``HotwordEngine`` port on pymicro-wakeword models (16 kHz mono int16, any block size)."""

    lag_s = 0.15
    """How long after the wake word ends it fires (median 145 ms, ``moss-voice bench hotword``):
    the audio from there on is handed to the question."""

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
        if threshold is not None and not 0 < threshold < 1:
            raise HotwordError(
                f"hotword engine {ENGINE!r}: threshold {threshold} is a probability cutoff and must lie between 0 and 1"
            )
        specs = [_ModelSpec(phrase, resolve(phrase, model_dir)) for phrase in self.phrases]
        try:
            from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures
            from pymicro_wakeword.wakeword import TfLiteWakeWord
        except ImportError as exc:
            raise missing_library(ENGINE, "pymicro_wakeword") from exc
        runtime = _runtime_path()
        lib = TfLiteWakeWord(runtime).lib
        self._detectors: list[_Detector] = []
        for spec in specs:
            _check_flatbuffer(lib, spec)
            try:
                model = MicroWakeWord(
                    spec.json_path.stem,
                    wake_word=spec.wake_word,
                    tflite_model=spec.tflite,
                    probability_cutoff=spec.cutoff,
                    sliding_window_size=spec.window,
                    trained_languages=spec.languages,
                    libtensorflowlite_c_path=runtime,
                )
            except (RuntimeError, ValueError) as exc:
                raise HotwordError(
                    f"hotword engine {ENGINE!r}, phrase {spec.phrase!r}: cannot load {str(spec.tflite)!r}: {exc}"
                ) from exc
            cutoff = spec.cutoff if threshold is None else threshold
            self._detectors.append(_Detector(spec, model, cutoff))
            log.info("hotword_model_loaded", engine=ENGINE, phrase=spec.phrase, model=str(spec.tflite), cutoff=cutoff)
        self._features = MicroWakeWordFeatures()

    def process(self, pcm: bytes, speech: bool) -> str | None:
        """Feed audio; the phrase detected, if one ended in it. ``speech`` is not used: the models
        must hear the start of the word, which comes before the VAD says speech."""
        detected: str | None = None
        for features in self._features.process_streaming(pcm):
            for detector in self._detectors:
                if detector.feed(features) and detected is None:
                    detected = detector.phrase
        return detected

    def reset(self) -> None:
        self._features.reset()
        for detector in self._detectors:
            detector.model.reset()

    async def aclose(self) -> None:
        for detector in self._detectors:
            detector.model.close()
