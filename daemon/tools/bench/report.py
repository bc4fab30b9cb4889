"""The latency benchmark's table and chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGES = ("end_silence", "asr", "ttft", "first_clause", "tts")
STAGE_LABELS = {
    "end_silence": "end silence (VAD)",
    "asr": "ASR final",
    "ttft": "LLM first token",
    "first_clause": "LLM first clause",
    "tts": "TTS first chunk",
    "stand_ins": "stand-ins' own handling",
    "overhead": "moss-voice overhead",
    "device": "output device's period (audio.block_ms)",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pair(stats: dict[str, float | None] | None) -> str:
    if not stats:
        return "-"
    return f"{_ms(stats.get('median'))} / {_ms(stats.get('p90'))}"


def _vad_lag(r: dict[str, Any]) -> float | None:
    """Median time the VAD took, beyond the configured end silence, to end the utterance."""
    decided = r["summary"].get("daemon", {}).get("vad_decided_ms", {}).get("median")
    return None if decided is None else decided - r["limit_ms"]["end_silence"]


def render_table(results: dict[str, Any]) -> str:
    """Median / p90 per figure and scenario, in ms."""
    rows = [
        (
            "scenario",
            "limit",
            "first audio",
            "overhead",
            "own overhead",
            "of it VAD",
            "first sound",
            "longest gap (max)",
            "sequential",
            "seq/stream",
        )
    ]
    for name, r in results["scenarios"].items():
        s = r["summary"]
        gap = s["longest_gap_ms"]
        rows.append(
            (
                name,
                _ms(r["limit_ms"]["total"]),
                _pair(s["first_audio_ms"]),
                _pair(s["overhead_ms"]),
                _pair(s.get("overhead_own_ms")),
                _ms(_vad_lag(r)),
                _pair(s["first_sound_ms"]),
                f"{_pair(gap)} ({_ms(gap.get('max'))})",
                _pair(s.get("sequential_first_audio_ms")),
                "-" if s.get("ratio_sequential_to_streaming") is None else f"{s['ratio_sequential_to_streaming']:.2f}x",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"latency at the output, end of the user's speech -> first reply sample; median / p90 in ms, n={results['n']}"
    ]
    for k, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("overhead = first audio - limit; own overhead = overhead - the stand-ins' own handling (median of")
    lines.append("bare requests to the same stand-ins, beyond their configured delays; 'where the overhead goes')")
    lines.append("'of it VAD': the VAD ended the utterance this long after")
    lines.append("the last loud sample plus the end silence (median; the daemon's own clock)")
    lines.append("")
    lines.append("limit = end silence + ASR final + LLM first token + first clause + TTS first chunk:")
    for name, r in results["scenarios"].items():
        lim = r["limit_ms"]
        parts = " + ".join(f"{_ms(lim[k])}" for k in STAGES)
        lines.append(f"  {name}: {parts} = {_ms(lim['total'])}  (first clause {r['first_clause']!r})")
    lines.append("")
    lines.extend(render_targets(results))
    return "\n".join(lines)


TARGET_OVERHEAD_MS = 20.0
TARGET_RATIO = 4.0
TARGET_GAP_MS = 50.0


def render_targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, checked on this run: overhead, the sequential ratio, gaps."""
    lines = ["targets:"]
    for name, r in results["scenarios"].items():
        s = r["summary"]
        overhead, gap = s["overhead_ms"]["median"], s["longest_gap_ms"]["max"]
        own = _median(s.get("overhead_own_ms"))
        stand_ins = stand_ins_ms(r)
        parts = overhead_parts(r)
        vad, device = parts.get("VAD"), parts.get("output device")
        waits = f" (overhead {_ms(overhead)} ms with the stand-ins' own handling, {_ms(stand_ins)} ms"
        if own is not None and vad is not None and device is not None:
            waits += (
                f"; of the own overhead {_ms(vad)} waiting for the microphone block that completes the silence,"
                f" {_ms(device)} for the speaker's next period, the rest {_ms(own - vad - device)}"
            )
        checks = [
            f"own overhead median {_ms(own)} ms < {TARGET_OVERHEAD_MS:.0f}: {_met(own, TARGET_OVERHEAD_MS)}"
            + waits
            + ")",
            f"longest gap {_ms(gap)} ms <= {TARGET_GAP_MS:.0f}: {_met(gap, TARGET_GAP_MS, inclusive=True)}",
        ]
        ratio = s.get("ratio_sequential_to_streaming")
        if ratio is not None:
            ok = "met" if ratio >= TARGET_RATIO else "NOT met"
            checks.append(f"sequential/streaming {ratio:.1f}x >= {TARGET_RATIO:.0f}x: {ok}")
        lines.append(f"  {name}: " + "; ".join(checks))
    return lines


def _met(value: float | None, limit: float, *, inclusive: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if value < limit or (inclusive and value == limit) else "NOT met"


OVERHEAD_PARTS = (
    ("VAD", "vad_decided_ms", "end_silence"),
    ("ASR hop", "step_asr_ms", "asr"),
    ("to LLM", "step_to_llm_ms", None),
    ("LLM hop", "step_llm_ms", "ttft"),
    ("first clause", "step_to_tts_ms", "first_clause"),
    ("TTS hop", "step_tts_ms", "tts"),
    ("output device", "step_to_speaker_ms", None),
)
"""Where the overhead goes: each stage on the daemon's clock minus what the service was set to cost."""


def stand_ins_ms(r: dict[str, Any]) -> float | None:
    """The stand-ins' own handling, ms: the sum of the three hops' medians (``r``: one scenario's results)."""
    stand_ins = r.get("stand_ins_ms")
    return None if not stand_ins else stand_ins.get("total")


def overhead_parts(r: dict[str, Any]) -> dict[str, float | None]:
    """Median ms each stage took beyond its share of the limit (``r``: one scenario's results)."""
    daemon = r["summary"].get("daemon", {})
    parts: dict[str, float | None] = {}
    for label, step, limit in OVERHEAD_PARTS:
        value = daemon.get(step, {}).get("median")
        parts[label] = None if value is None else value - (r["limit_ms"][limit] if limit else 0.0)
    return parts


def render_breakdown(results: dict[str, Any]) -> str:
    """A second table: the overhead stage by stage (median ms, the daemon's own clock)."""
    labels = [label for label, _, _ in OVERHEAD_PARTS]
    rows = [("scenario", *labels, "sum", "overhead", "of it stand-ins", "own overhead")]
    hops: list[str] = []
    for name, r in results["scenarios"].items():
        parts = overhead_parts(r)
        known = [v for v in parts.values() if v is not None]
        rows.append(
            (
                name,
                *(_ms1(parts[label]) for label in labels),
                _ms1(sum(known) if known else None),
                _ms1(r["summary"]["overhead_ms"]["median"]),
                _ms1(stand_ins_ms(r)),
                _ms1(_median(r["summary"].get("overhead_own_ms"))),
            )
        )
        each = r.get("stand_ins_ms") or {}
        hops.append(
            f"  {name}: ASR {_ms1(each.get('asr'))} (in 'ASR hop'), LLM {_ms1(each.get('llm'))} (in 'LLM hop' and"
            f" 'first clause'), TTS {_ms1(each.get('tts'))} (in 'TTS hop')"
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["where the overhead goes, median ms (a stage's time on the daemon's clock minus its part of the limit):"]
    for k, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"output device: from the first audio written to its first sample played; the speaker's period is "
        f"audio.block_ms = {results.get('block_ms', '?')} ms"
    )
    lines.append(
        "stand-ins: their own handling (median ms), a bare client's request to the same stand-in process minus the"
        " configured delays; own overhead = overhead - stand-ins (median of the turns' own overheads):"
    )
    lines.extend(hops)
    return "\n".join(lines)


def _ms1(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_png(results: dict[str, Any], path: Path) -> str | None:
    """Stacked bars of the latency breakdown per scenario; a message instead if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'moss-voice[bench]'): no chart"
    names = list(results["scenarios"])
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 3, 5))
    bottoms = [0.0] * len(names)
    for stage in (*STAGES, "stand_ins", "overhead", "device"):
        heights = []
        for name in names:
            r = results["scenarios"][name]
            device = overhead_parts(r).get("output device") or 0.0
            stand_ins = stand_ins_ms(r) or 0.0
            if stage == "device":
                value = device
            elif stage == "stand_ins":
                value = stand_ins
            elif stage == "overhead":
                value = (r["summary"]["overhead_ms"]["median"] or 0.0) - stand_ins - device
            else:
                value = r["limit_ms"][stage]
            heights.append(max(value or 0.0, 0.0))
        ax.bar(names, heights, bottom=bottoms, label=STAGE_LABELS[stage])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for i, name in enumerate(names):
        summary = results["scenarios"][name]["summary"]
        seq = summary.get("sequential_first_audio_ms", {}).get("median")
        ratio = summary.get("ratio_sequential_to_streaming")
        label = f"{bottoms[i]:.0f} ms"
        if seq:  # as text: its bar would dwarf the breakdown
            label += f"\nsequential {seq:.0f} ms" + (f" ({ratio:.1f}x)" if ratio else "")
        ax.annotate(label, (i, bottoms[i]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize="small")
    ax.set_ylim(0, max(bottoms, default=1.0) * 1.3)
    ax.set_ylabel("ms, end of speech -> first reply sample (median)")
    ax.set_title(f"moss-voice latency breakdown (n={results['n']})")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _rows_text(rows: list[tuple[str, ...]]) -> list[str]:
    """Aligned columns, a rule under the header: the first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _median(stats: dict[str, Any] | None) -> float | None:
    return None if not stats else stats.get("median")


def render_speculation(results: dict[str, Any]) -> str:
    """Speculation off and on, side by side per scenario: first audio against its limit and
    target, how much sooner than off, speculations and LLM requests per turn."""
    from daemon.tools.bench.scenarios import MARGIN_SPECULATION_MS, MARGIN_TODAY_MS, SOONER_TARGET_MS

    rows: list[tuple[str, ...]] = [
        (
            "scenario",
            "speculate after",
            "limit",
            "target",
            "first audio",
            "over limit",
            "sooner by",
            "speculations/turn",
            "LLM requests/turn",
            "target met",
        )
    ]
    checks: list[str] = []
    for name, r in results["scenarios"].items():
        modes: list[tuple[str, dict[str, Any]]] = [("off", r)]
        modes += [(f"{ms} ms", spec) for ms, spec in r.get("speculation", {}).items()]
        for label, m in modes:
            s = m["summary"]
            first = _median(s["first_audio_ms"])
            limit = m["limit_ms"]["total"] if label == "off" else m["limit_ms"]
            target = m["target_ms"]
            rows.append(
                (
                    name if label == "off" else "",
                    label,
                    _ms(limit),
                    _ms(target),
                    _pair(s["first_audio_ms"]),
                    _ms(_median(s["overhead_ms"])),
                    "-" if label == "off" else _ms(m.get("sooner_by_ms")),
                    _ms1(_median(s["daemon"].get("speculations"))),
                    _ms1(_median(s.get("llm_requests"))),
                    _met(None if first is None else first - target, 0.0, inclusive=True),
                )
            )
            if label != "off" and r["services_ms"] >= r["limit_ms"]["end_silence"]:
                sooner = m.get("sooner_by_ms")
                checks.append(
                    f"  {name}, speculate after {label}: services {_ms(r['services_ms'])} >= end silence "
                    f"{_ms(r['limit_ms']['end_silence'])}, sooner by {_ms(sooner)} >= {SOONER_TARGET_MS:.0f}: "
                    + ("not measured" if sooner is None else "met" if sooner >= SOONER_TARGET_MS else "NOT met")
                )
    end_silence = ", ".join(str(ms) for ms in results.get("end_silence_ms", [])) or "?"
    lines = [
        f"speculation off and on, side by side (vad.end_silence_ms = {end_silence}); end of speech -> first reply "
        f"sample, median / p90 ms, n={results['n']}"
    ]
    lines += _rows_text(rows)
    lines.append(
        "limit: off = end silence + services; on = max(end silence, speculation point + services), services ="
        " ASR final + LLM first token + first clause + TTS first chunk"
    )
    lines.append(
        f"target: the limit + {MARGIN_TODAY_MS:.0f} ms off (today's), + {MARGIN_SPECULATION_MS:.0f} ms on"
        " (issue 12); 'over limit' = first audio - limit; 'sooner by' = off's median first audio - this one's"
    )
    lines.append("speculations/turn: turn_finished's 'speculations' ('-': not reported); LLM requests at the stand-in")
    if checks:
        lines.append("targets (services slower than the end silence):")
        lines.extend(checks)
    return "\n".join(lines)
