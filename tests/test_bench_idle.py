"""``moss-voice bench idle``: a small real run gives real figures; the /proc and importtime readers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from daemon.__main__ import main
from daemon.tools.bench.daemon_process import parse_importtime, proc_cpu_s, proc_status
from daemon.tools.bench.idle import room_noise

pytestmark = pytest.mark.timeout(120)


def test_small_run_gives_real_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "idle.json"
    code = main(["bench", "idle", "-n", "1", "--window", "2", "--pipeline-seconds", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    raw = json.loads(out.read_text())

    [start] = raw["starts"]
    assert 0 < start["ready_ms"] < 30_000 and math.isfinite(start["ready_ms"])
    assert start["daemon_ms"] is not None and 0 <= start["daemon_ms"] <= start["ready_ms"]
    assert start["exit_code"] == 0  # SIGTERM stops it cleanly
    assert start["cpu_s"] > 0

    idle = raw["idle"]
    assert idle["window_s"] >= 1.9
    assert idle["cpu_s_per_s"] >= 0 and math.isfinite(idle["cpu_s_per_s"])
    assert 10 < idle["peak_rss_mb"] < 2000
    assert 10 < idle["rss_mb"] <= idle["peak_rss_mb"]
    short = raw["short_input"]
    assert short["exit_code"] == 0 and 10 < short["peak_rss_mb"] <= idle["peak_rss_mb"]

    noise, speech = raw["pipeline"]
    assert (noise["audio"], speech["audio"]) == ("room noise", "speech")
    for p in (noise, speech):
        assert p["cpu_s_per_s"] > 0 and p["vad_cpu_s_per_s"] > 0 and p["aec_cpu_s_per_s"] > 0
    assert noise["speech_fraction"] < 0.1  # quiet room tone is not speech
    assert speech["speech_fraction"] > 0.3 and speech["speech_starts"] >= 1

    assert raw["load"]["vad_mb"] > 0
    assert raw["imports"] and raw["imports_total_ms"] > 0
    summary = raw["summary"]
    assert summary["projected_cpu_s_per_s"]["room noise"] == pytest.approx(idle["cpu_s_per_s"])
    assert summary["clean_stops"] is True
    for name in ("start to ready, median", "peak RSS (VmHWM)", "projected idle CPU, room noise"):
        assert name in printed


def test_parse_importtime_keeps_top_level_imports_slowest_first() -> None:
    text = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       142 |        142 |   _io",
            "import time:       300 |       1000 | encodings",
            "import time:       200 |        200 |     numpy.core",
            "import time:      2000 |      52000 | numpy",
            "not an importtime line",
        ]
    )
    top, total = parse_importtime(text, top=1)
    assert [(c.module, c.cumulative_ms) for c in top] == [("numpy", 52.0)]
    assert total == pytest.approx(53.0)


def test_proc_readers_on_this_process() -> None:
    assert proc_cpu_s(os.getpid()) > 0
    status = proc_status(os.getpid())
    assert status["VmHWM"] >= status["VmRSS"] > 1000  # kB
    assert status["Threads"] >= 1


def test_room_noise_is_quiet_and_seeded() -> None:
    a, b = room_noise(1.0), room_noise(1.0)
    assert len(a) == 16000 and (a == b).all()
    rms = float((a.astype(float) ** 2).mean() ** 0.5)
    assert 20 < rms < 50  # about -60 dBFS
