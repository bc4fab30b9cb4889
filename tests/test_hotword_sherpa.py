"""The sherpa-onnx keyword-spotting hotword engine (hardware/hotword/sherpa.py).

No published keyword-spotting model can be downloaded here, so detection runs on the tone-coded
model in tests/fixtures/sherpa_tone_kws (see make_model.py there): sherpa-onnx's real
``KeywordSpotter`` with its own feature extraction, zipformer2 model loading, keyword graph,
beam search, threshold and trailing-blank rule, on a model whose "speech" is a sequence of pure
tones, one per pinyin token. These tests prove the engine's side (model directory, checks,
spelling, the audio path, the phrase it reports, reset, threshold); they say nothing about how
well a real model hears 你好摩斯.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from daemon.tools.bench.vad import motor_noise, synth_speech, white_noise
from hardware.errors import HardwareError
from hardware.hotword.keyword_tokens import KeywordSpellingError, spell
from hardware.hotword.sherpa import DEFAULT_THRESHOLD, SherpaModelError, SherpaModelFiles, SherpaOnnxHotword
from hardware.wavfile import load_wav_16k_mono

MODEL = Path(__file__).parent / "fixtures" / "sherpa_tone_kws"
RATE = 16000
NIHAO_MOSI = ["n", "ǐ", "h", "ǎo", "m", "ó", "s", "ī"]
KAISHI = ["k", "āi", "sh", "ǐ"]
PUBLISHED_NAMES = {  # the names in sherpa-onnx-kws-zipformer-wenetspeech-3.3M-2024-01-01
    "encoder.onnx": "encoder-epoch-12-avg-2-chunk-16-left-64.onnx",
    "decoder.onnx": "decoder-epoch-12-avg-2-chunk-16-left-64.onnx",
    "joiner.onnx": "joiner-epoch-12-avg-2-chunk-16-left-64.onnx",
}


def _load_make_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sherpa_tone_kws_make_model", MODEL / "make_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_model = _load_make_model()


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def tones(token_seq: list[str], tone_s: float = 0.15, tail_s: float = 0.7) -> bytes:
    """The tone code of ``token_seq``, then silence (a keyword fires once blanks follow it)."""
    parts = []
    for hz in make_model.tone_code(token_seq):
        t = np.arange(int(RATE * tone_s)) / RATE
        parts.append(0.3 * np.sin(2 * np.pi * hz * t))
    parts.append(np.zeros(int(RATE * tail_s)))
    return pcm16(np.concatenate(parts))


def feed(engine: SherpaOnnxHotword, pcm: bytes, block_ms: int = 20) -> list[str]:
    """Everything the engine detects, block by block as the microphone would deliver it."""
    step = RATE * block_ms // 1000 * 2
    found = [engine.process(pcm[i : i + step], True) for i in range(0, len(pcm), step)]
    return [word for word in found if word is not None]


@pytest.fixture
def engine() -> Iterator[SherpaOnnxHotword]:
    yield SherpaOnnxHotword(["你好摩斯", " ".join(KAISHI)], model_dir=str(MODEL))


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(MODEL, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


# configuration ---------------------------------------------------------------------------------


def test_phrases_are_kept_as_configured_and_spelt_in_the_models_tokens(engine: SherpaOnnxHotword) -> None:
    assert engine.phrases == ("你好摩斯", "k āi sh ǐ")
    assert engine.keywords == ("n ǐ h ǎo m ó s ī @0", "k āi sh ǐ @1")
    assert engine.threshold == DEFAULT_THRESHOLD == 0.25


def test_hanzi_are_spelt_as_the_published_chinese_models_write_keywords() -> None:
    split_pinyin = {"n", "ǐ", "h", "ǎo", "m", "ó", "s", "ī", "x", "iǎo", "ài", "t", "óng", "ué", "y", "ín"}
    assert spell("你好摩斯", split_pinyin) == NIHAO_MOSI
    assert spell("小爱同学", split_pinyin) == ["x", "iǎo", "ài", "t", "óng", "x", "ué"]
    assert spell("你好 摩斯", split_pinyin) == NIHAO_MOSI  # spaces between hanzi do not matter
    assert spell("银", split_pinyin) == ["y", "ín"]  # y and w count as initials, as in the models
    assert spell("你好", {"nǐ", "hǎo"}) == ["nǐ", "hǎo"]  # whole-syllable models
    assert spell("你好", {"你", "好"}) == ["你", "好"]  # character models
    assert spell("▁HE LLO", {"▁HE", "LLO"}) == ["▁HE", "LLO"]  # tokens as written


@pytest.mark.parametrize(
    ("phrase", "says"),
    [
        ("小爱同学", "x iǎo ài t óng x ué not in the model's tokens.txt"),
        ("x iǎo", "x iǎo not in the model's tokens.txt"),
        ("你好moss", "mixes hanzi with 'mos'"),
        ("  ", "the phrase is empty"),
    ],
)
def test_a_phrase_the_model_cannot_spell_is_refused_by_name(phrase: str, says: str) -> None:
    with pytest.raises(SherpaModelError, match="cannot spell the phrase") as info:
        SherpaOnnxHotword(["你好摩斯", phrase], model_dir=str(MODEL))
    assert says in str(info.value)
    assert repr(phrase) in str(info.value)
    assert isinstance(info.value.__cause__, KeywordSpellingError)


def test_the_published_file_names_are_found_full_precision_first(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    for plain, published in PUBLISHED_NAMES.items():
        (model / plain).rename(model / published)
        int8 = published.replace(".onnx", ".int8.onnx")
        shutil.copy(model / published, model / int8)
    files = SherpaModelFiles.find(model)
    assert files.encoder.name == "encoder-epoch-12-avg-2-chunk-16-left-64.onnx"
    assert files.joiner.name == "joiner-epoch-12-avg-2-chunk-16-left-64.onnx"
    for published in PUBLISHED_NAMES.values():  # the mobile variant: int8 files only
        (model / published).unlink()
    engine = SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))
    assert engine.files.encoder.name == "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
    assert feed(engine, tones(NIHAO_MOSI)) == ["你好摩斯"]


# errors ----------------------------------------------------------------------------------------


def test_every_error_is_a_hardware_error() -> None:
    assert issubclass(SherpaModelError, HardwareError)


@pytest.mark.parametrize("model_dir", [None, ""])
def test_no_model_dir_names_the_setting(model_dir: str | None) -> None:
    with pytest.raises(SherpaModelError, match=r"wake\.hotword\.model_dir is not set"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=model_dir)


def test_a_missing_model_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(SherpaModelError, match=r"'.*/nowhere' does not exist"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SherpaModelError, match="is not a directory"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(tmp_path / "file"))


@pytest.mark.parametrize(
    ("missing", "says"), [("tokens.txt", "has no tokens.txt"), ("joiner.onnx", r"no joiner\*\.onnx")]
)
def test_a_missing_model_file_is_named(tmp_path: Path, missing: str, says: str) -> None:
    model = copy_model(tmp_path)
    (model / missing).unlink()
    with pytest.raises(SherpaModelError, match=says):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


@pytest.mark.parametrize("part", ["encoder", "decoder", "joiner"])
@pytest.mark.parametrize("garbage", [b"garbage\n", np.random.default_rng(7).bytes(4096)], ids=["text", "random"])
def test_a_broken_model_file_is_named(tmp_path: Path, part: str, garbage: bytes) -> None:
    model = copy_model(tmp_path)
    (model / f"{part}.onnx").write_bytes(garbage)
    with pytest.raises(SherpaModelError, match=rf"{part} '.*{part}\.onnx' is not an ONNX model"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


def test_a_truncated_model_file_is_named(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    data = (model / "encoder.onnx").read_bytes()
    (model / "encoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(SherpaModelError, match=r"encoder .* is not an ONNX model"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


def test_an_onnx_file_that_is_not_a_kws_encoder_is_refused_not_an_exit(tmp_path: Path) -> None:
    """sherpa-onnx itself ends the process on a model without model_type; we raise first."""
    model = copy_model(tmp_path)
    shutil.copy(model / "joiner.onnx", model / "encoder.onnx")
    with pytest.raises(SherpaModelError, match="not a streaming transducer encoder"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


def test_a_decoder_without_its_metadata_is_refused_not_an_exit(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    shutil.copy(model / "joiner.onnx", model / "decoder.onnx")
    with pytest.raises(SherpaModelError, match="lacks the metadata vocab_size, context_size"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


def test_tokens_of_another_model_are_refused(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    with (model / "tokens.txt").open("a", encoding="utf-8") as f:
        f.write("zh 14\n")
    with pytest.raises(SherpaModelError, match=r"has 15 tokens but the decoder .* expects 14"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


def test_a_malformed_token_table_names_the_line(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    (model / "tokens.txt").write_text("<blk> 0\nn one\n", encoding="utf-8")
    with pytest.raises(SherpaModelError, match=r"not a token table: line 2 is 'n one'"):
        SherpaOnnxHotword(["你好摩斯"], model_dir=str(model))


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.1])
def test_a_threshold_outside_0_1_is_refused(threshold: float) -> None:
    with pytest.raises(SherpaModelError, match="threshold must be between 0 and 1"):
        SherpaOnnxHotword(["你好摩斯"], threshold=threshold, model_dir=str(MODEL))


@pytest.mark.parametrize("phrases", [[], "你好摩斯"])
def test_phrases_must_be_a_non_empty_list(phrases: list[str] | str) -> None:
    with pytest.raises(SherpaModelError, match="phrases must be a non-empty list"):
        SherpaOnnxHotword(phrases, model_dir=str(MODEL))


# detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_ms", [10, 20, 30, 1000])
def test_each_phrase_fires_once_on_its_code_and_is_reported_as_configured(
    engine: SherpaOnnxHotword, block_ms: int
) -> None:
    assert feed(engine, tones(NIHAO_MOSI), block_ms) == ["你好摩斯"]
    assert feed(engine, tones(KAISHI), block_ms) == ["k āi sh ǐ"]
    assert feed(engine, tones(NIHAO_MOSI, tone_s=0.08), block_ms) == ["你好摩斯"]  # said faster


def test_the_vad_verdict_is_ignored(engine: SherpaOnnxHotword) -> None:
    pcm = tones(NIHAO_MOSI)
    assert [w for w in (engine.process(pcm[i : i + 640], False) for i in range(0, len(pcm), 640)) if w] == ["你好摩斯"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """espeak-ng speech, made once for the module."""
    d = tmp_path_factory.mktemp("sherpa_speech")
    texts = {
        "nihao_mosi_zh": ("你好摩斯，今天天气怎么样？", "cmn"),
        "kaishi_zh": ("开始吧，我们一起去银行。", "cmn"),
        "english": ("Hello there, what is the weather like today in the city?", "en-us"),
    }
    out = {}
    for name, (text, voice) in texts.items():
        out[name] = pcm16(load_wav_16k_mono(synth_speech(d / f"{name}.wav", text, voice)))
    return out


@pytest.mark.parametrize("name", ["nihao_mosi_zh", "kaishi_zh", "english"])
def test_no_wake_on_speech(engine: SherpaOnnxHotword, speech: dict[str, bytes], name: str) -> None:
    assert feed(engine, speech[name]) == []


def test_no_wake_on_silence_or_noise(engine: SherpaOnnxHotword) -> None:
    assert feed(engine, bytes(RATE * 2 * 3)) == []
    assert feed(engine, pcm16(white_noise(10.0))) == []
    assert feed(engine, pcm16(motor_noise(10.0))) == []


def test_no_wake_on_the_right_tones_in_the_wrong_order_or_an_unfinished_phrase(engine: SherpaOnnxHotword) -> None:
    assert feed(engine, tones(NIHAO_MOSI[::-1])) == []
    assert feed(engine, tones(NIHAO_MOSI[:6])) == []
    assert feed(engine, tones(NIHAO_MOSI[:7])) == []  # the last tone missing
    assert feed(engine, tones(NIHAO_MOSI[:5] + NIHAO_MOSI[6:])) == []  # one in the middle missing
    assert feed(engine, tones(NIHAO_MOSI[:4] + KAISHI)) == []


def test_a_phrase_that_begins_another_wins() -> None:
    """A limit of keyword spotting, stated in the README: 你好 fires before 你好摩斯 can end."""
    both = SherpaOnnxHotword(["你好摩斯", "你好"], model_dir=str(MODEL))
    assert feed(both, tones(NIHAO_MOSI)) == ["你好"]


def test_a_high_threshold_reaches_sherpa_onnx(engine: SherpaOnnxHotword) -> None:
    """The tone model's tokens score about 0.95; a threshold above that never fires."""
    strict = SherpaOnnxHotword(["你好摩斯"], threshold=0.999, model_dir=str(MODEL))
    assert feed(strict, tones(NIHAO_MOSI)) == []
    assert feed(engine, tones(NIHAO_MOSI)) == ["你好摩斯"]


def test_reset_forgets_a_half_heard_phrase(engine: SherpaOnnxHotword) -> None:
    pcm = tones(NIHAO_MOSI)
    half = int(RATE * 0.15 * 4) * 2  # n ǐ h ǎo heard, m ó s ī to come
    assert feed(engine, pcm[:half]) == []
    engine.reset()
    assert feed(engine, pcm[half:]) == []
    assert feed(engine, pcm[:half]) + feed(engine, pcm[half:]) == ["你好摩斯"]


async def test_a_closed_engine_refuses_audio(engine: SherpaOnnxHotword) -> None:
    await engine.aclose()
    await engine.aclose()
    engine.reset()
    with pytest.raises(RuntimeError, match="closed"):
        engine.process(bytes(640), True)


def test_the_committed_tone_model_is_what_make_model_builds(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    make_model.build(tmp_path)
    for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
        assert (tmp_path / name).read_bytes() == (MODEL / name).read_bytes(), name
