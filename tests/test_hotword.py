"""The local hotword engines on espeak-ng recordings, fed in 20 ms blocks as the daemon feeds them:
each fires on its phrase and not on other speech or noise; the phrase that fired is reported;
errors name the engine and the phrase or file at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from daemon.tools.bench.hotword_corpus import Clip, noise_clips, other_speech, phrase_clips, speak
from hardware.errors import HardwareError
from hardware.hotword import ENGINES, Hotword, HotwordError, make_hotword
from hardware.hotword.microwakeword import BUILTIN_MODELS

BLOCK = 640
"""20 ms of 16 kHz int16."""


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's espeak-ng and sox recordings are cached."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed for the hotword recordings")
    return tmp_path_factory.mktemp("hotword-audio")


@pytest.fixture(scope="session")
def others(audio: Path) -> list[Clip]:
    """Half a minute of other speech (some of it close to the wake words) and noise."""
    return other_speech(audio, 0.5) + noise_clips(audio, 3.0)


def one(text: str, audio: Path, voice: str, speed: int = 175, then: str = "") -> Clip:
    """A recording of ``text`` by ``voice`` (the voices the engines are known to hear well)."""
    (clip,) = [c for c in phrase_clips(text, audio, 20, then) if c.label == f"{voice} {speed}wpm"]
    return clip


def detections(engine: Hotword, samples: np.ndarray, block: int = BLOCK) -> list[tuple[str, float]]:
    """What ``engine`` reported, and when (seconds into the audio, at the end of the block)."""
    pcm = samples.astype("<i2").tobytes()
    found = []
    for start in range(0, len(pcm), block):
        phrase = engine.process(pcm[start : start + block], False)
        if phrase is not None:
            found.append((phrase, min(start + block, len(pcm)) / 2 / 16000))
    return found


# --------------------------------------------------------------------------- microwakeword


@pytest.mark.parametrize(
    ("model", "text"), [("hey_mycroft", "hey mycroft"), ("okay_nabu", "okay nabu"), ("alexa", "alexa")]
)
async def test_microwakeword_fires_once_on_its_phrase_and_never_on_other_speech(
    audio: Path, others: list[Clip], model: str, text: str
) -> None:
    engine = make_hotword("microwakeword", [model])
    clip = one(text, audio, "en-us")
    ((phrase, at),) = detections(engine, clip.samples)
    assert phrase == model
    assert clip.phrase_end_s is not None
    assert clip.phrase_end_s - 0.2 < at < clip.phrase_end_s + 1.0  # as the word ends, not before it starts
    for other in others:
        assert detections(engine, other.samples) == [], other.label
    await engine.aclose()


async def test_microwakeword_hears_the_wake_word_before_the_question(audio: Path) -> None:
    engine = make_hotword("microwakeword", ["hey_mycroft"])
    clip = one("hey mycroft", audio, "en-us", then="what is the weather like today")
    ((phrase, at),) = detections(engine, clip.samples)
    assert phrase == "hey_mycroft"
    assert clip.phrase_end_s is not None and at < clip.phrase_end_s + 0.5 < clip.seconds - 1.0
    await engine.aclose()


async def test_microwakeword_reports_which_of_several_models_fired(audio: Path) -> None:
    engine = make_hotword("microwakeword", ["hey_mycroft", "alexa", "okay_nabu"])
    assert engine.phrases == ("hey_mycroft", "alexa", "okay_nabu")
    for model, text in (("alexa", "alexa"), ("okay_nabu", "okay nabu"), ("hey_mycroft", "hey mycroft")):
        assert [p for p, _ in detections(engine, one(text, audio, "en-us").samples)] == [model]
        engine.reset()  # as the daemon does after each wake
    await engine.aclose()


async def test_microwakeword_takes_blocks_of_any_size(audio: Path) -> None:
    engine = make_hotword("microwakeword", ["alexa"])
    assert [p for p, _ in detections(engine, one("alexa", audio, "en-us").samples, block=333)] == ["alexa"]
    await engine.aclose()


async def test_microwakeword_reset_forgets_the_start_of_the_word(audio: Path) -> None:
    engine = make_hotword("microwakeword", ["alexa"])
    clip = one("alexa", audio, "en-us")
    assert clip.phrase_end_s is not None
    cut = int((clip.phrase_end_s - 0.25) * 16000)  # inside the word, before it can fire
    assert detections(engine, clip.samples[:cut]) == []
    engine.reset()
    assert detections(engine, clip.samples[cut:]) == []
    assert [p for p, _ in detections(engine, clip.samples)] == ["alexa"]  # whole again: fires
    await engine.aclose()


async def test_microwakeword_threshold_replaces_the_models_cutoff(audio: Path) -> None:
    strict = make_hotword("microwakeword", ["alexa"], threshold=0.99999)
    assert detections(strict, one("alexa", audio, "en-us").samples) == []
    await strict.aclose()


async def test_microwakeword_loads_a_model_from_its_json_path_or_model_dir(tmp_path: Path, audio: Path) -> None:
    import pymicro_wakeword

    models = Path(pymicro_wakeword.__file__).parent / "models"
    shutil.copy(models / "alexa.json", tmp_path / "mine.json")
    shutil.copy(models / "alexa.tflite", tmp_path / "alexa.tflite")
    clip = one("alexa", audio, "en-us")
    by_path = make_hotword("microwakeword", [str(tmp_path / "mine.json")])
    assert [p for p, _ in detections(by_path, clip.samples)] == [str(tmp_path / "mine.json")]
    by_name = make_hotword("microwakeword", ["mine"], model_dir=str(tmp_path))
    assert [p for p, _ in detections(by_name, clip.samples)] == ["mine"]
    await by_path.aclose()
    await by_name.aclose()


# --------------------------------------------------------------------------- pocketsphinx


@pytest.mark.parametrize("phrase", ["hello robot", "okay robot"])
async def test_pocketsphinx_fires_once_on_its_phrase_and_never_on_other_speech(
    audio: Path, others: list[Clip], phrase: str
) -> None:
    engine = make_hotword("pocketsphinx", [phrase])
    clip = one(phrase, audio, "en-us+klatt4")
    ((found, at),) = detections(engine, clip.samples)
    assert found == phrase
    assert clip.phrase_end_s is not None and clip.phrase_end_s - 0.2 < at < clip.phrase_end_s + 1.0
    for other in others:
        assert detections(engine, other.samples) == [], other.label
    await engine.aclose()


async def test_pocketsphinx_hears_the_wake_word_before_the_question(audio: Path) -> None:
    engine = make_hotword("pocketsphinx", ["hello robot"])
    clip = one("hello robot", audio, "en-us+klatt4", then="what is the weather like today")
    ((phrase, at),) = detections(engine, clip.samples)
    assert phrase == "hello robot"
    assert clip.phrase_end_s is not None and at < clip.phrase_end_s + 0.5 < clip.seconds - 1.0
    await engine.aclose()


async def test_pocketsphinx_reports_which_phrase_fired_as_configured(audio: Path) -> None:
    engine = make_hotword("pocketsphinx", ["Hello  Robot", "okay robot"], threshold=1e-20)
    assert [p for p, _ in detections(engine, one("okay robot", audio, "en-us+klatt4").samples)] == ["okay robot"]
    hello = one("hello robot", audio, "en-us+klatt4").samples
    assert [p for p, _ in detections(engine, hello, block=333)] == ["Hello  Robot"]
    await engine.aclose()


async def test_pocketsphinx_reset_forgets_the_start_of_the_phrase(audio: Path) -> None:
    engine = make_hotword("pocketsphinx", ["hello robot"])
    clip = one("hello robot", audio, "en-us+klatt4")
    assert clip.phrase_end_s is not None
    cut = int((clip.phrase_end_s - 0.3) * 16000)
    assert detections(engine, clip.samples[:cut]) == []
    engine.reset()
    assert detections(engine, clip.samples[cut:]) == []
    assert [p for p, _ in detections(engine, clip.samples)] == ["hello robot"]
    await engine.aclose()


async def test_pocketsphinx_threshold_is_the_keyphrase_threshold(audio: Path) -> None:
    deaf = make_hotword("pocketsphinx", ["hello robot"], threshold=1e30)
    assert detections(deaf, one("hello robot", audio, "en-us+klatt4").samples) == []
    await deaf.aclose()


# --------------------------------------------------------------------------- errors


def _error(engine: str, phrases: list[str], **options: object) -> str:
    with pytest.raises(HotwordError) as caught:
        make_hotword(engine, phrases, **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, HardwareError)
    return str(caught.value)


def test_an_unknown_engine_is_named_with_the_known_ones() -> None:
    message = _error("snowboy", ["hey"])
    assert "'snowboy'" in message and all(name in message for name in ENGINES)


def test_no_phrases_is_an_error() -> None:
    assert "no phrases" in _error("microwakeword", [])
    assert "must be a list" in _error("pocketsphinx", "hello robot")  # type: ignore[arg-type]


def test_an_unknown_microwakeword_model_lists_the_built_in_ones() -> None:
    message = _error("microwakeword", ["hey_robot"])
    assert "'hey_robot'" in message and all(model in message for model in BUILTIN_MODELS)


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    message = _error("microwakeword", [str(missing)])
    assert str(missing) in message and "does not exist" in message


def test_a_json_naming_a_missing_tflite_is_named(tmp_path: Path) -> None:
    config = tmp_path / "mine.json"
    config.write_text(
        json.dumps({"model": "gone.tflite", "micro": {"probability_cutoff": 0.9, "sliding_window_size": 5}})
    )
    message = _error("microwakeword", [str(config)])
    assert "gone.tflite" in message and "does not exist" in message


@pytest.mark.parametrize("text", ["{not json", '{"model": "x.tflite"}', "[]"])
def test_a_broken_json_is_named(tmp_path: Path, text: str) -> None:
    config = tmp_path / "broken.json"
    config.write_text(text)
    message = _error("microwakeword", [str(config)])
    assert str(config) in message and "microwakeword" in message


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100])
def test_a_broken_tflite_is_refused_without_crashing(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.tflite").write_bytes(content)
    config = tmp_path / "bad.json"
    config.write_text(
        json.dumps({"model": "bad.tflite", "micro": {"probability_cutoff": 0.9, "sliding_window_size": 5}})
    )
    message = _error("microwakeword", ["bad"], model_dir=str(tmp_path))
    assert "bad.tflite" in message and "not a valid TFLite model" in message


@pytest.mark.parametrize("threshold", [0.0, 1.0, 5.0])
def test_microwakeword_threshold_must_be_a_probability(threshold: float) -> None:
    assert "between 0 and 1" in _error("microwakeword", ["alexa"], threshold=threshold)


def test_pocketsphinx_names_the_word_it_does_not_know() -> None:
    message = _error("pocketsphinx", ["hello robot", "hello zorblax"])
    assert "'hello zorblax'" in message and "zorblax" in message.split(":")[-1]


def test_pocketsphinx_refuses_what_it_does_not_use() -> None:
    assert "model_dir" in _error("pocketsphinx", ["hello robot"], model_dir="/models")
    assert "threshold" in _error("pocketsphinx", ["hello robot"], threshold=-1.0)
    assert "empty phrase" in _error("pocketsphinx", ["hello robot", "  "])


def test_importing_the_package_loads_no_vendor_library() -> None:
    import subprocess
    import sys

    probe = "import sys, hardware.hotword; print(sorted(m for m in sys.modules if 'sphinx' in m or 'wakeword' in m))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_speech_recordings_are_real_speech(audio: Path) -> None:
    """The fixtures' own sanity: espeak-ng spoke, and the phrase end lies inside the clip."""
    samples = speak("hello robot", audio, "en-us+klatt4")
    assert len(samples) > 8000 and np.abs(samples).max() > 3000
    clip = one("hello robot", audio, "en-us+klatt4")
    assert clip.phrase_end_s is not None and 0.8 < clip.phrase_end_s < clip.seconds - 0.4


@pytest.mark.parametrize(
    ("engine", "module"), [("microwakeword", "pymicro_wakeword"), ("pocketsphinx", "pocketsphinx")]
)
def test_a_missing_library_names_the_pip_extra(engine: str, module: str) -> None:
    """In a fresh interpreter where ``module`` cannot be imported (as if it were not installed)."""
    import subprocess
    import sys

    probe = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from hardware.hotword import HotwordError, make_hotword\n"
        f"try: make_hotword({engine!r}, ['alexa' if {engine!r} == 'microwakeword' else 'hello robot'])\n"
        "except HotwordError as exc: print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert f"'{engine}'" in out.stdout and module in out.stdout and "pip install 'moss-voice[hotword]'" in out.stdout
