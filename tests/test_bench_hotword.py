"""``moss-voice bench hotword --quick`` end to end: options parsed by the real CLI, a tiny corpus,
a table and JSON whose figures hang together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from daemon.__main__ import build_parser
from daemon.tools.bench.hotword import command, plan, spoken_text
from hardware.errors import HardwareError


@pytest.fixture
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed for the hotword recordings")
    return tmp_path_factory.getbasetemp() / "hotword-bench-corpus"


def test_quick_bench_measures_both_default_engines(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hotword.json"
    args = build_parser().parse_args(["bench", "hotword", "--quick", "--corpus", str(corpus), "--json", str(out)])
    assert command(args) == 0
    table = capsys.readouterr().out
    assert "| microwakeword | hey_mycroft |" in table and "| pocketsphinx  | hello robot |" in table

    results = {r["engine"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"microwakeword", "pocketsphinx"}
    for r in results.values():
        assert r["recordings"] == 5 and 0 <= r["detected"] <= 5
        assert r["detected"] == len(r["latencies_ms"]) == 5 - len(r["missed"])
        assert r["speech_s"] >= 30 and r["noise_s"] == pytest.approx(15.0)
        assert r["audio_s"] > r["speech_s"] + r["noise_s"]  # plus the recordings of the phrase
        assert 0 < r["cpu_s_per_s"] < 1
        assert all(-500 < ms < 2000 for ms in r["latencies_ms"])
    assert results["microwakeword"]["said"] == "hey mycroft"
    assert results["microwakeword"]["detected"] >= 1  # espeak-ng's en-us voice is known to wake it


def test_engine_and_phrase_options() -> None:
    def parse(*argv: str) -> list[tuple[str, tuple[str, ...]]]:
        return plan(build_parser().parse_args(["bench", "hotword", *argv]))

    assert parse() == [("microwakeword", ("hey_mycroft",)), ("pocketsphinx", ("hello robot",))]
    assert parse("--engine", "pocketsphinx") == [("pocketsphinx", ("hello robot",))]
    assert parse("--engine", "pocketsphinx", "--phrase", "okay robot", "--phrase", "hello robot") == [
        ("pocketsphinx", ("okay robot", "hello robot"))
    ]
    with pytest.raises(HardwareError, match="needs --phrase"):
        parse("--engine", "sherpa-onnx")
    with pytest.raises(HardwareError, match="needs --engine"):
        parse("--phrase", "hello robot")
    assert spoken_text("microwakeword", "okay_nabu") == "okay nabu"
    assert spoken_text("pocketsphinx", "hello robot") == "hello robot"
