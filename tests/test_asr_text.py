"""TranscriptAssembler: text assembly and the end of an utterance for every FunASR flavour."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.clients.asr_text import CPP_PCM_ERROR, TranscriptAssembler, join_segments
from daemon.errors import AsrError


def online(text: str, *, is_final: bool = False, mode: str = "2pass-online") -> dict[str, Any]:
    return {"mode": mode, "text": text, "wav_name": "x", "is_final": is_final}


def offline(text: str, *, is_final: bool = False, mode: str = "2pass-offline") -> dict[str, Any]:
    return {"mode": mode, "text": text, "wav_name": "x", "is_final": is_final}


def feed_all(asm: TranscriptAssembler, messages: list[dict[str, Any]], *, after_end_marker: bool = False) -> list[bool]:
    return [asm.feed(m, after_end_marker=after_end_marker) for m in messages]


# -- text assembly ------------------------------------------------------------------------


def test_online_deltas_accumulate_until_an_offline_result_replaces_them() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    feed_all(asm, [online("你"), online("好")])
    assert asm.text == "你好"
    feed_all(asm, [offline("你好。")])
    assert asm.text == "你好。"  # not "你好你好。"


def test_several_offline_segments_are_concatenated() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    feed_all(asm, [online("打开"), offline("打开灯。"), online("谢"), offline("谢谢。")])
    assert asm.text == "打开灯。谢谢。"


def test_online_text_after_the_last_segment_is_kept() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    feed_all(asm, [offline("今天天气怎么样？"), online("我想"), online("听歌")])
    assert asm.text == "今天天气怎么样？我想听歌"


def test_without_offline_text_the_online_deltas_are_the_text() -> None:
    asm = TranscriptAssembler("python-classic")
    feed_all(asm, [online("what is", is_final=True), online(" the weather", is_final=True)])
    assert asm.text == "what is the weather"


def test_leading_punctuation_of_a_segment_joins_the_previous_segment() -> None:
    """The realtime punctuation model moves a segment's mark to the next one.

    See docs/protocols.md "FunASR: observed quirks".
    """
    asm = TranscriptAssembler("python-2026")
    feed_all(asm, [offline("今天天气怎么样"), offline("？我想听一首歌")])
    assert asm.text == "今天天气怎么样？我想听一首歌"
    asm = TranscriptAssembler("python-2026")
    feed_all(asm, [offline("what time is it"), offline("? tell me a joke")])
    assert asm.text == "what time is it? tell me a joke"


@pytest.mark.parametrize(
    ("left", "right", "joined"),
    [
        ("hello robot", "what time is it", "hello robot what time is it"),
        ("打开灯。", "谢谢。", "打开灯。谢谢。"),
        ("打开灯", "。谢谢", "打开灯。谢谢"),
        ("hello", "，你好", "hello，你好"),
        ("", "abc", "abc"),
        ("abc", "", "abc"),
        ("ok", "?", "ok?"),
        ("turn on the light", "。", "turn on the light。"),
        ("是的", "ok", "是的ok"),
    ],
)
def test_join_segments(left: str, right: str, joined: str) -> None:
    assert join_segments(left, right) == joined


def test_empty_texts_unknown_keys_and_missing_mode_are_ignored() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    feed_all(
        asm,
        [
            online("开"),
            {"mode": "2pass-offline", "text": "", "wav_name": "x", "is_final": False},  # empty duplicate
            {
                "mode": "2pass-online",
                "text": "灯",
                "spk_name": "unknown",
                "slice_type": 1,
                "index": 0,
                "is_final": False,
            },
            {"wav_name": "x", "is_final": False},  # no text, no mode
            {"mode": "someday-new-mode", "text": "???", "is_final": False},
        ],
    )
    assert asm.text == "开灯"
    assert asm.messages == 5


@pytest.mark.parametrize("timestamp", ["[[100,200],[200,500]]", 1718000000123, [[100, 200], [200, 500]], None, ""])
def test_timestamp_of_any_type_is_ignored(timestamp: object) -> None:
    asm = TranscriptAssembler("cpp-2pass")
    msg = offline("打开灯。") | {"timestamp": timestamp, "stamp_sents": ""}
    assert asm.feed(msg, after_end_marker=False) is False
    assert asm.text == "打开灯。"


# -- the end of the utterance, per flavour -----------------------------------------------


def test_cpp_2pass_ends_on_the_first_is_final_true_after_the_end_marker() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    assert feed_all(asm, [online("你"), online("好"), offline("你好。")]) == [False, False, False]
    # the flush reply: empty text and no mode
    assert asm.feed({"text": "", "wav_name": "x", "is_final": True}, after_end_marker=True) is True
    assert asm.text == "你好。"


def test_cpp_2pass_flush_reply_with_text_is_final_and_counted() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    feed_all(asm, [online("打开")])
    assert asm.feed(offline("打开灯。", is_final=True), after_end_marker=True) is True
    assert asm.text == "打开灯。"


def test_cpp_2pass_is_final_before_the_end_marker_does_not_end_the_utterance() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    assert asm.feed(offline("打开灯。", is_final=True), after_end_marker=False) is False


def test_cpp_2pass_non_final_messages_after_the_end_marker_do_not_end_it() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    assert asm.feed(offline("打开灯。"), after_end_marker=True) is False


def test_cpp_offline_ends_on_the_offline_result_although_is_final_is_false() -> None:
    asm = TranscriptAssembler("cpp-offline")
    assert asm.feed(offline("今天天气怎么样？", mode="offline"), after_end_marker=True) is True
    assert asm.text == "今天天气怎么样？"


def test_cpp_offline_empty_result_also_ends_the_utterance() -> None:
    asm = TranscriptAssembler("cpp-offline")
    assert asm.feed(offline("", mode="offline"), after_end_marker=True) is True
    assert asm.text == ""


def test_cpp_offline_ignores_2pass_messages_for_the_end() -> None:
    asm = TranscriptAssembler("cpp-offline")
    assert asm.feed(offline("x"), after_end_marker=True) is False


def test_python_classic_inverted_is_final_does_not_end_the_utterance() -> None:
    asm = TranscriptAssembler("python-classic")
    # streaming results echo is_speaking=true into is_final
    assert feed_all(asm, [online("你", is_final=True), online("好", is_final=True)]) == [False, False]
    # even a segment result that arrives after our end marker still says true: more may follow
    assert asm.feed(offline("你好。", is_final=True), after_end_marker=True) is False
    assert asm.feed(online("谢谢", is_final=True), after_end_marker=True) is False
    # the flush result says false
    assert asm.feed(offline("谢谢。", is_final=False), after_end_marker=True) is True
    assert asm.text == "你好。谢谢。"


def test_python_classic_empty_flush_from_2024_09_ends_the_utterance() -> None:
    asm = TranscriptAssembler("python-classic")
    feed_all(asm, [offline("打开灯。", is_final=True)])
    assert asm.feed({"mode": "2pass-offline", "text": "", "is_final": False}, after_end_marker=True) is True
    assert asm.text == "打开灯。"


def test_python_classic_offline_mode_result_ends_the_utterance() -> None:
    asm = TranscriptAssembler("python-classic")
    assert asm.feed(offline("你好", mode="offline"), after_end_marker=True) is True


def test_python_2026_ends_only_on_the_is_end_ack_which_has_no_text() -> None:
    asm = TranscriptAssembler("python-2026")
    assert asm.feed(online("你"), after_end_marker=False) is False
    assert asm.feed(offline("你好。", is_final=True) | {"spk_name": "unknown"}, after_end_marker=True) is False
    assert asm.feed({"mode": "2pass-offline", "text": "", "is_final": True}, after_end_marker=True) is False
    ack = {"mode": "2pass", "wav_name": "x", "is_final": True, "is_end": True}
    assert asm.feed(ack, after_end_marker=True) is True
    assert asm.text == "你好。"


@pytest.mark.parametrize("flavour", ["cpp-2pass", "cpp-offline", "python-classic"])
def test_is_end_ack_is_honoured_by_every_flavour(flavour: str) -> None:
    asm = TranscriptAssembler(flavour)
    assert asm.feed({"mode": "2pass", "is_final": True, "is_end": True}, after_end_marker=True) is True


def test_nothing_is_final_before_the_end_marker() -> None:
    for flavour in ("cpp-2pass", "cpp-offline", "python-classic", "python-2026"):
        asm = TranscriptAssembler(flavour)
        assert (
            asm.feed({"mode": "offline", "text": "x", "is_final": False, "is_end": True}, after_end_marker=False)
            is False
        )


# -- errors -------------------------------------------------------------------------------


def test_python_2026_error_acknowledgement_raises() -> None:
    asm = TranscriptAssembler("python-2026")
    msg = {"mode": "2pass", "wav_name": "x", "is_final": False, "is_end": True, "error": "CUDA out of memory"}
    with pytest.raises(AsrError, match="CUDA out of memory"):
        asm.feed(msg, after_end_marker=True)


def test_empty_error_field_is_not_an_error() -> None:
    asm = TranscriptAssembler("python-2026")
    assert asm.feed({"mode": "2pass", "is_final": True, "is_end": True, "error": ""}, after_end_marker=True) is True


def test_cpp_pcm_only_error_text_is_an_error_not_a_transcript() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    with pytest.raises(AsrError, match="ONLY SUPPORT PCM"):
        asm.feed({"text": CPP_PCM_ERROR, "is_final": True}, after_end_marker=True)
    assert asm.text == ""


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"mode": "2pass-online", "text": 5}, "text"),
        ({"mode": "2pass-online", "text": ["a"]}, "text"),
        ({"mode": "2pass-online", "text": True}, "text"),
        ({"mode": 3, "text": "a"}, "mode"),
        ({"mode": "2pass-online", "text": "a", "is_final": "true"}, "is_final"),
        ({"mode": "2pass-online", "text": "a", "is_final": 1}, "is_final"),
        ({"mode": "2pass", "is_end": "yes"}, "is_end"),
    ],
)
def test_wrong_types_raise_asr_error_naming_the_field(msg: dict[str, Any], field: str) -> None:
    asm = TranscriptAssembler("cpp-2pass")
    with pytest.raises(AsrError, match=field):
        asm.feed(msg, after_end_marker=True)


def test_non_object_raises() -> None:
    asm = TranscriptAssembler("cpp-2pass")
    with pytest.raises(AsrError, match="JSON object"):
        asm.feed(["not", "an", "object"], after_end_marker=True)  # type: ignore[arg-type]


def test_unknown_flavour_is_rejected() -> None:
    with pytest.raises(ValueError, match="python-classic"):
        TranscriptAssembler("python")
