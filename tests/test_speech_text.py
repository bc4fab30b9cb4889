"""The text stage between the LLM and the TTS: cleaning, clause splitting, the reply cap.

Every case is fed whole, one character at a time and at a few fixed pseudo-random cut points,
and must give the same result each way (``clauses``/``cleaned`` assert that before returning).
The properties at the end draw their texts and cut points with hypothesis.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from states.speech_text import (
    ClauseSplitter,
    SpeechCleaner,
    SpeechText,
    SpeechTextSettings,
    clean_for_speech,
    join_clauses,
    speech_weight,
    split_for_speech,
)

WAIT = SpeechTextSettings(wait_for_closers=True)
FINE = SpeechTextSettings(min_clause_weight=1, first_clause_min_weight=1)
"""No merging: every boundary shows."""
FINE_WAIT = SpeechTextSettings(min_clause_weight=1, first_clause_min_weight=1, wait_for_closers=True)


def _cuts(text: str, seeds: range = range(6)) -> list[list[str]]:
    """The text as deltas: whole, per character, and at random points (incl. empty deltas)."""
    ways = [[text], list(text)]
    for seed in seeds:
        rng = random.Random(seed)
        parts, i = [], 0
        while i < len(text):
            n = rng.choice((0, 1, 1, 2, 3, 5, 8))
            parts.append(text[i : i + n])
            i += n
        ways.append(parts)
    return ways


def _speak(deltas: list[str], settings: SpeechTextSettings | None) -> list[str]:
    st = SpeechText(settings)
    out: list[str] = []
    for d in deltas:
        out += st.feed(d)
    return out + st.finish()


def clauses(text: str, settings: SpeechTextSettings | None = None) -> list[str]:
    """What SpeechText speaks for ``text``, checked to be the same however it is cut."""
    results = [_speak(ways, settings) for ways in _cuts(text)]
    assert all(r == results[0] for r in results), results
    for clause in results[0]:
        assert clause == clause.strip() and speech_weight(clause) > 0
    return results[0]


def cleaned(text: str) -> str:
    """What SpeechCleaner makes of ``text``, checked to be the same however it is cut."""
    results = []
    for ways in _cuts(text):
        c = SpeechCleaner()
        results.append("".join(c.feed(d) for d in ways) + c.finish())
    assert all(r == results[0] for r in results), results
    tidy = clean_for_speech(text)  # the one-shot form only tidies whitespace
    assert "".join(tidy.split()) == "".join(results[0].split())
    return tidy


# ---------------------------------------------------------------------------------------------
# Splitting


def test_chinese_sentences_split_at_chinese_marks() -> None:
    assert clauses("你好，我是小明。今天天气很好，适合出去散步！你想去哪里？") == [
        "你好，我是小明。",
        "今天天气很好，适合出去散步！",  # "今天天气很好，" alone is lighter than 8
        "你想去哪里？",
    ]


def test_english_sentences_split_at_marks_followed_by_space() -> None:
    assert clauses("Hello there, my friend. How are you today? I am fine; thanks for asking!") == [
        "Hello there,",  # the first clause only needs weight 4
        "my friend. How are you today?",  # "my friend." alone is lighter than 8
        "I am fine; thanks for asking!",
    ]
    assert clauses("Hello there, my friend. How are you today? I am fine; thanks!", FINE) == [
        "Hello there,",
        "my friend.",
        "How are you today?",
        "I am fine;",
        "thanks!",
    ]


def test_mixed_chinese_and_english() -> None:
    assert clauses("我喜欢用Python写代码,因为它很简单.你呢?Java也不错。", FINE) == [
        "我喜欢用Python写代码,",
        "因为它很简单.",
        "你呢?",
        "Java也不错。",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "The value of pi is 3.14 and it never ends.",
        "The ticket costs $1,000.50 in total today.",
        "There were 1,000,000 people there at 12:30 sharp.",
        "Download version v1.2.3 of file.txt from the server now.",
        "The ratio was 3:2 and the score 2.5 out of 10.",
    ],
)
def test_numbers_and_filenames_are_not_split(text: str) -> None:
    assert clauses(text) == [text]


def test_abbreviations_do_not_end_a_clause() -> None:
    assert clauses("Ask Dr. Smith and Mr. Lee, e.g. after lunch. Then go home.", FINE) == [
        "Ask Dr. Smith and Mr. Lee,",
        "e.g. after lunch.",
        "Then go home.",
    ]


def test_english_period_waits_for_the_next_character() -> None:
    sp = ClauseSplitter()
    assert sp.feed("The answer is 3.") == []  # might be 3.14
    assert sp.feed("14 exactly.") == []
    assert sp.feed(" And") == ["The answer is 3.14 exactly."]
    assert sp.finish() == ["And"]


def test_english_period_at_the_end_of_input_is_a_boundary() -> None:
    sp = ClauseSplitter()
    assert sp.feed("It is done.") == []
    assert sp.finish() == ["It is done."]


def test_ellipsis_stays_with_its_clause() -> None:
    assert clauses("Well... I think so. Maybe…… 也许吧，我不确定。", FINE_WAIT) == [
        "Well...",
        "I think so.",
        "Maybe……",
        "也许吧，",
        "我不确定。",
    ]
    assert clauses("Wait...what happened here?") == ["Wait...what happened here?"]


def test_question_and_exclamation_runs_stay_together_when_waiting() -> None:
    assert clauses("真的吗？！太好了！！我们走吧。", FINE_WAIT) == ["真的吗？！", "太好了！！", "我们走吧。"]


def test_runs_split_at_once_drop_the_extra_marks() -> None:
    assert clauses("真的吗？！太好了！！我们走吧。", FINE) == ["真的吗？", "太好了！", "我们走吧。"]


def test_closing_quotes_stay_with_their_clause_when_waiting() -> None:
    text = '他说：“今天真热。”然后走了。「好的！」她回答。He said "fine." Then left.'
    assert clauses(text, FINE_WAIT) == [
        "他说：",
        "“今天真热。”",
        "然后走了。",
        "「好的！」",
        "她回答。",
        'He said "fine."',
        "Then left.",
    ]


def test_closers_after_an_at_once_split_are_dropped() -> None:
    text = "他说：“今天真热。”然后走了。（这是真的！）好吧。"
    assert clauses(text, FINE) == ["他说：", "“今天真热。", "然后走了。", "（这是真的！", "好吧。"]


def test_english_closers_are_kept_in_both_modes() -> None:
    text = 'She said "yes." Then (after a while.) we left.'
    expected = ['She said "yes."', "Then (after a while.)", "we left."]
    assert clauses(text, FINE) == expected
    assert clauses(text, FINE_WAIT) == expected


def test_short_clauses_are_merged_with_the_next() -> None:
    s = SpeechTextSettings(min_clause_weight=6, first_clause_min_weight=2)
    assert clauses("好的。是的，对，没错，就是这样的，明白了吗？", s) == [
        "好的。",
        "是的，对，没错，就是这样的，",
        "明白了吗？",  # lighter than 6, but the last clause is always spoken
    ]


def test_first_clause_uses_its_own_minimum() -> None:
    s = SpeechTextSettings(min_clause_weight=8, first_clause_min_weight=2)
    assert clauses("OK. Yes, sure, fine. Done.", s) == ["OK.", "Yes, sure, fine. Done."]
    s = SpeechTextSettings(min_clause_weight=8, first_clause_min_weight=6)
    assert clauses("OK. Yes, sure, fine. Done.", s) == ["OK. Yes, sure,", "fine. Done."]


def test_the_last_clause_is_spoken_however_short() -> None:
    s = SpeechTextSettings(min_clause_weight=4)
    assert clauses("这是一个很长的句子，真的很长。好。", s) == ["这是一个很长的句子，", "真的很长。", "好。"]


def test_first_clause_leaves_before_the_rest_arrives() -> None:
    text = "你好，我是小明。今天天气很好，我们出去走走吧。"
    st = SpeechText()
    for n, ch in enumerate(text):
        got = st.feed(ch)
        if got:
            assert got == ["你好，我是小明。"]
            assert text[: n + 1] == "你好，我是小明。"  # at once, on the mark itself
            break
    else:
        pytest.fail("no clause before the end")


def test_first_english_clause_leaves_once_the_space_arrives() -> None:
    st = SpeechText()
    assert st.feed("Sure, I can help with that.") == []
    assert st.feed(" ") == ["Sure, I can help with that."]
    assert st.feed("First, open the lid") == []


def test_first_clause_with_closer_waits_one_character() -> None:
    st = SpeechText(WAIT)
    assert st.feed("你好，我是小明。") == []
    assert st.feed("今") == ["你好，我是小明。"]


def test_newlines_are_boundaries_and_merged_lines_get_a_pause() -> None:
    text = "购物清单\n\n苹果\n香蕉\n这是一段很长很长的说明文字\nApples\nPears and more pears\n"
    assert clauses(text) == [
        "购物清单",
        "苹果，香蕉，这是一段很长很长的说明文字",
        "Apples, Pears and more pears",
    ]


def test_run_on_text_is_split_at_spaces() -> None:
    s = SpeechTextSettings(max_clause_chars=30, min_clause_weight=2)
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    got = clauses(words, s)
    assert len(got) > 2
    assert all(len(c) <= 30 for c in got)
    assert " ".join(got) == words


def test_run_on_chinese_is_cut_at_the_maximum() -> None:
    s = SpeechTextSettings(max_clause_chars=20)
    text = "这是一段没有任何标点符号的很长很长的中文文字用来测试强制切分是否正常工作好的"
    got = clauses(text, s)
    assert [len(c) for c in got[:-1]] == [20] * (len(got) - 1)
    assert "".join(got) == text


def test_clauses_are_never_only_punctuation() -> None:
    assert clauses("。！？…… ，\n---\n！？") == []
    assert clauses("“”。好的，就这样吧。") == ["好的，就这样吧。"]


# ---------------------------------------------------------------------------------------------
# The reply cap and the end of a reply


def test_max_reply_chars_truncates_at_a_clause_boundary() -> None:
    s = SpeechTextSettings(max_clause_chars=20, max_reply_chars=25, min_clause_weight=1)
    st = SpeechText(s)
    out = st.feed("第一句话很短。第二句话也很短。第三句话")
    assert out == ["第一句话很短。", "第二句话也很短。"]  # 15 characters
    assert not st.truncated
    out = st.feed("会超过字数上限。第四句不会说。")  # 15 + 12 > 25
    assert out == []
    assert st.truncated and st.done
    assert st.feed("更多的文字。") == []
    assert st.finish() == []
    assert st.spoken == ("第一句话很短。", "第二句话也很短。")
    assert sum(len(c) for c in st.spoken) <= 25


def test_truncation_is_the_same_however_the_text_is_cut() -> None:
    s = SpeechTextSettings(max_clause_chars=40, max_reply_chars=40, min_clause_weight=1)
    text = "Hello there, my friend. This is a long reply. It goes on and on. Nobody hears this."
    got = clauses(text, s)
    assert got == ["Hello there,", "my friend."]  # 22 characters; the next would make 43


def test_end_of_turn_token_ends_the_reply_at_once() -> None:
    st = SpeechText()
    assert st.feed("好的，我明白了，马上去办") == ["好的，我明白了，"]
    assert st.feed("<eo") == []
    assert st.feed("m>\n<|Human|>: 谢谢你") == ["马上去办"]
    assert st.done and not st.truncated
    assert st.feed("更多") == []
    assert st.finish() == []
    assert st.spoken_text == "好的，我明白了，马上去办"


@pytest.mark.parametrize("token", ["<eoa>", "<eom>", "</s>", "<|end_of_assistant|>", "<|im_end|>", "<|Human|>"])
def test_end_tokens(token: str) -> None:
    assert clauses(f"这是回答的内容。{token}这不该被读出来。") == ["这是回答的内容。"]


def test_feed_after_finish_raises() -> None:
    st = SpeechText()
    st.finish()
    with pytest.raises(RuntimeError):
        st.feed("x")
    with pytest.raises(RuntimeError):
        c = SpeechCleaner()
        c.finish()
        c.feed("x")


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        SpeechTextSettings(max_clause_chars=200, max_reply_chars=100)
    with pytest.raises(ValueError):
        SpeechTextSettings(min_clause_weight=-1)


def test_join_clauses_and_weight() -> None:
    assert join_clauses(["你好，", "Hello,", "world.", "再见。"]) == "你好，Hello, world.再见。"
    assert speech_weight("你好，world! It's 2024.") == 2 + 2 + 2 + 2
    assert speech_weight("。，!? ") == 0


# ---------------------------------------------------------------------------------------------
# Cleaning


def test_plain_text_passes_unchanged() -> None:
    text = "你好！Hello, world. 价格是$1,000.50，折扣20%，温度25℃或77°F。a+b=c, x-y≤z → 结果。"
    assert cleaned(text) == text


def test_code_fences_are_not_read() -> None:
    text = "代码如下：\n```python\nprint('**hi**')\nx = [1](2)\n```\n运行后会输出结果。"
    assert cleaned(text) == "代码如下：\n运行后会输出结果。"
    assert clauses(text) == ["代码如下：", "运行后会输出结果。"]


def test_code_fence_split_across_deltas() -> None:
    c = SpeechCleaner()
    parts = ["看这里：\n`", "`", "`js\ncon", "sole.log(1)\n`", "``", "\n之后", "的文字"]
    assert "".join(c.feed(p) for p in parts) + c.finish() == "看这里：\n之后的文字"


def test_tilde_fence_indented_fence_and_longer_closer() -> None:
    text = "前面\n~~~\ncode ~~~ here\n~~~~\n中间\n   ````\n   a```b\n   ````\n后面"
    assert cleaned(text) == "前面\n中间\n后面"


def test_unterminated_fence_drops_the_rest() -> None:
    assert cleaned("说明：\n```bash\nrm -rf /\necho done") == "说明："
    assert clauses("好的，下面是代码。\n```\nx = 1") == ["好的，下面是代码。"]


def test_inline_code_keeps_its_content() -> None:
    assert cleaned("运行 `pip install **x**` 或 ``a`b`` 即可") == "运行 pip install **x** 或 ab 即可"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("这是**重要**的内容", "这是重要的内容"),
        ("This is *very* __very__ _really_ ~~not~~ good", "This is very very really not good"),
        ("***bold italic*** text", "bold italic text"),
        ("use snake_case and __init__ names", "use snake_case and init names"),
        ("2*3=6 and 2 * 3 = 6 and 2**3=8", "2*3=6 and 2 * 3 = 6 and 2**3=8"),
        ("大约3~5个", "大约3~5个"),
        ("转义 \\*星号\\* 保留", "转义 *星号* 保留"),
    ],
)
def test_emphasis(text: str, expected: str) -> None:
    assert cleaned(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# 标题\n## Sub title\n正文 #1 和 C# 保留", "标题\nSub title\n正文 #1 和 C# 保留"),
        ("- 第一\n* 第二\n+ 第三\n• 第四", "第一\n第二\n第三\n第四"),
        ("1. 打开电源\n2) 按下按钮\n3.关闭\n10. 结束", "打开电源\n按下按钮\n关闭\n结束"),
        ("3.14 是圆周率\n2024年来了\n-5度很冷", "3.14 是圆周率\n2024年来了\n-5度很冷"),
        ("> 引用的话\n> - 列表", "引用的话\n列表"),
        ("上文\n\n---\n***\n下文", "上文\n下文"),
        ("  - 缩进的列表\n    1. 更深", "缩进的列表\n更深"),
        ("- [ ] 待办\n- [x] 完成", "待办\nx 完成"),
    ],
)
def test_line_start_markdown(text: str, expected: str) -> None:
    assert cleaned(text) == expected


def test_tables_become_pauses() -> None:
    text = "| 名称 | 价格 |\n|:---|---:|\n| 苹果 | 5元 |\n| Pear | five |\n"
    assert cleaned(text) == "名称，价格，\n苹果，5元，\nPear, five,"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("详见[官方文档](https://docs.x.cn/a_(b)?q=1)。", "详见官方文档。"),
        ("图片![一只猫](cat.png)很可爱", "图片一只猫很可爱"),
        ("参考[1]和[注释]", "参考1和注释"),
        ("Go to https://example.com/path?a=1&b=2. Then stop.", "Go to . Then stop."),
        ("访问www.baidu.com获取，或者http://x.cn/a.html。", "访问获取，或者。"),
        ("官网(https://x.cn)和（https://y.cn）", "官网和"),
        ("see (https://en.wikipedia.org/wiki/A_(b)) now", "see now"),
        ("**https://x.cn**很好", "很好"),
        ("<https://x.cn> 自动链接", "自动链接"),
        ("what about whttp and show.www stay", "what about whttp and show.www stay"),
        ("网址:https://x.cn/a.html。链接=http://y.cn", "网址:。链接="),
    ],
)
def test_links_and_urls(text: str, expected: str) -> None:
    assert cleaned(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你好😊！", "你好！"),
        ("Great job 👍 see you", "Great job see you"),
        ("一家人👨‍👩‍👧‍👦在一起", "一家人在一起"),
        ("点赞👍🏽加油", "点赞加油"),
        ("中国🇨🇳和英格兰🏴󠁧󠁢󠁥󠁮󠁧󠁿", "中国和英格兰"),
        ("爱心❤️和星星⭐和✅完成", "爱心和星星和完成"),
        ("第1️⃣步", "第1步"),
        ("零宽\u200b字符\ufeff和\ufffd替换", "零宽字符和替换"),
        ("①②和→↑不是表情，≥≤也不是", "①②和→↑不是表情，≥≤也不是"),
    ],
)
def test_emoji_are_removed(text: str, expected: str) -> None:
    assert cleaned(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<|MOSS|>: 你好<|Results|>世界", "你好世界"),
        ("第一行<br>第二行<br/>第三行", "第一行\n第二行\n第三行"),
        ("<b>粗体</b>和<span style='x'>span</span>", "粗体和span"),
        ("<think>用户想知道\n天气。</think>今天晴天。", "今天晴天。"),
        ("a < b and c > d, 1<2, <3", "a < b and c > d, 1<2, <3"),
        ("结束了<eo", "结束了"),
        ("结束了<|end_of", "结束了"),
        ("回答<eoh>继续", "回答继续"),
    ],
)
def test_tags_and_special_tokens(text: str, expected: str) -> None:
    assert cleaned(text) == expected


def test_whitespace_is_normalised() -> None:
    assert cleaned("  Hello\t\t world \r\n\n\n  你好，  世界\u3000！ ") == "Hello world\n你好，世界！"


def test_text_around_removed_constructs_survives_in_order() -> None:
    text = (
        "## 步骤\n1. 先打开**设置**😊，点击[网络](https://x.cn)。\n"
        "```\nsecret code\n```\n"
        "2. 然后输入`ping 8.8.8.8`，访问https://a.b/c 查看<eoh>结果。\n"
        "> 注意：不要关闭~~电源~~窗口！"
    )
    assert cleaned(text) == (
        "步骤\n先打开设置，点击网络。\n然后输入ping 8.8.8.8，访问 查看结果。\n注意：不要关闭电源窗口！"
    )
    assert clauses(text) == [
        "步骤，先打开设置，",  # a short line is merged, with a pause
        "点击网络。然后输入ping 8.8.8.8，",
        "访问 查看结果。注意：",
        "不要关闭电源窗口！",
    ]


# ---------------------------------------------------------------------------------------------
# Properties over random text


_PLAIN = list("你好世界天气明白大家") + list("abcdefg") + list("0123") + [" "] * 4 + list("，。！？.,:;")


PROPERTY = settings(max_examples=100, deadline=None)
_DELTA_SIZES = st.lists(st.sampled_from((0, 1, 1, 2, 3, 5, 8, 13)), max_size=80)
"""How a drawn text is cut into deltas (the rest after the listed sizes is one last delta)."""


def _cut(text: str, sizes: list[int]) -> list[str]:
    parts, i = [], 0
    for n in sizes:
        parts.append(text[i : i + n])
        i += n
    return [*parts, text[i:]]


def _speakable(text: str) -> str:
    return "".join(c for c in text if c.isalnum())


@PROPERTY
@given(body=st.text(st.sampled_from(_PLAIN), min_size=5, max_size=300), sizes=_DELTA_SIZES)
def test_plain_text_is_never_lost(body: str, sizes: list[int]) -> None:
    """Letters, digits and hanzi all survive in order (marks may go at a clause start)."""
    text = "你" + body
    assert "".join(cleaned(text).split()) == "".join(text.split())
    for settings_ in (None, WAIT, SpeechTextSettings(max_clause_chars=15)):
        spoken = clauses(text, settings_)
        assert _speakable("".join(spoken)) == _speakable(text)
        assert _speak(_cut(text, sizes), settings_) == spoken


# fmt: off
_FRAGMENTS = [
    "你好，", "我是小明。", "Hello, ", "world. ", "e.g. ", "3.14", "1,000", "12:30", "$1,000.50",
    "**粗体**", "*it*", "__b__", "snake_case", "2*3", "~~删~~", "`code`", "```py\nx=1\n```\n",
    "~~~\nq\n~~~\n", "[链接](https://x.cn/a_(b))", "![图](p.png)", "https://a.b/c?d=1", "www.x.cn",
    "😊", "👨‍👩‍👧", "🇨🇳", "1️⃣", "<eoh>", "<|MOSS|>", "<br>", "<b>", "</b>", "\n", "\n\n",
    "# ", "- ", "1. ", "> ", "| a | b |\n|---|---|\n", "……", "...", "“引号。”", "（括号）", " ", "!",
    "?", "<", "a < b", "http", "<think>想</think>", "\\*",
]
# fmt: on


@PROPERTY
@given(fragments=st.lists(st.sampled_from(_FRAGMENTS), min_size=3, max_size=25), sizes=_DELTA_SIZES)
def test_random_markdown_gives_the_same_result_however_it_is_cut(fragments: list[str], sizes: list[int]) -> None:
    text = "".join(fragments)
    cleaned(text)
    for settings_ in (None, WAIT, SpeechTextSettings(max_clause_chars=12, max_reply_chars=40, min_clause_weight=3)):
        assert _speak(_cut(text, sizes), settings_) == clauses(text, settings_)


def test_split_for_speech_is_the_one_shot_form() -> None:
    text = "你好，我是小明。今天天气很好！"
    assert split_for_speech(text) == clauses(text)
