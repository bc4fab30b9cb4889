"""The tables of ``moss-voice bench speculation``, as Markdown (they go into BENCHMARKS.md as they are)."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def render_wasted(results: dict[str, Any]) -> list[str]:
    """The overview per pause length, then one table per pause length, question by question."""
    runs = results["passes"].get("wasted", {})
    if not runs:
        return []
    lines = [
        f"### Wasted work: speculate after {results['speculate_after_ms']} ms, end silence "
        f"{results['end_silence_ms']} ms, n={results['n']} per question",
        "",
    ]
    overview = []
    for pause, r in runs.items():
        s = r["summary"]
        overview.append(
            (
                f"{pause} ms",
                s["turns"],
                s["llm_requests_per_turn"],
                s["llm_requests_max"],
                s["speculations_per_turn"],
                s["dropped"],
                s["llm_streams_closed"],
                s["played_first"],
                f"{s['whole_question']} / {s['turns']}",
                s["wrong_answers"],
                s["no_answer"],
            )
        )
    lines += _table(
        (
            "pause",
            "turns",
            "LLM requests/turn",
            "max",
            "speculations/turn",
            "dropped",
            "LLM streams closed early",
            "played the first",
            "whole question heard",
            "wrong answers played",
            "no answer",
        ),
        overview,
    )
    wrong = sum(r["summary"]["wrong_answers"] for r in runs.values())
    turns = sum(r["summary"]["turns"] for r in runs.values())
    lines += [
        "",
        f"never a wrong answer played: {'met' if wrong == 0 else 'NOT met'} ({wrong} of {turns} turns)",
        "speculations, dropped, played the first: turn_finished's fields ('-': not reported);"
        " LLM requests and streams closed early: counted at the LLM stand-in",
    ]
    for pause, r in runs.items():
        lines += ["", f"#### Pause of {pause} ms", ""]
        rows = [
            (
                t["question"],
                t["transcript"],
                t["llm_requests"],
                t["speculations"],
                t["dropped"],
                t["speculation_played_first"],
                t["llm_streams_closed"],
                "right" if t["right_answer"] else ("none" if not t["reply"] else f"WRONG: {t['reply']}"),
            )
            for t in r["turns"]
        ]
        lines += _table(
            (
                "question",
                "transcript",
                "LLM requests",
                "speculations",
                "dropped",
                "played the first",
                "streams closed",
                "answer played",
            ),
            rows,
        )
    return lines


def render_cut_offs(results: dict[str, Any]) -> list[str]:
    """How often the short silence ended the utterance at the pause, per pause length."""
    runs = results["passes"].get("cut_offs", {})
    if not runs:
        return []
    lines = [
        f"### Cut-offs: end silence {results['end_silence_ms']} ms, {results['end_silence_short_ms']} ms after a"
        f" transcript ending in a full stop or a question mark, speculate after {results['speculate_after_ms']} ms,"
        " FunASR stand-in punctuating its finals",
        "",
    ]
    rows = []
    for pause, r in runs.items():
        s = r["summary"]
        cut = sorted({t["transcript"] for t in r["turns"] if not t["whole_question"]})
        rows.append(
            (
                f"{pause} ms",
                s["turns"],
                s["cut_off"],
                f"{100 * s['cut_off'] / s['turns']:.0f} %" if s["turns"] else "-",
                s["cut_off_marked"],
                s["wrong_answers"],
                "; ".join(repr(c) for c in cut) or "-",
            )
        )
    lines += _table(
        (
            "pause",
            "turns",
            "cut off",
            "share",
            "of them ending in . or ?",
            "wrong answers played",
            "what was answered instead",
        ),
        rows,
    )
    lines += ["", "cut off: the turn's transcript is not the whole question (the user was answered mid-sentence)"]
    return lines


def render(results: dict[str, Any]) -> str:
    lines = render_wasted(results)
    cut = render_cut_offs(results)
    if cut:
        lines += ["", *cut]
    return "\n".join(lines)
