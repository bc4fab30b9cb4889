"""What a FunASR server with a punctuation model does to an offline result, roughly: the segment
ends with a full stop, or with a question mark when it opens with a question word. The
stand-in applies it when ``FunAsrBehaviour.punctuate`` is set, so that rules keyed on a final
mark (``vad.end_silence_short_ms``) can be measured on the stand-ins' mid-sentence pauses."""

from __future__ import annotations

from states.cjk import is_cjk
from states.listen import ends_sentence

ENGLISH_QUESTION_WORDS = frozenset(
    {
        "what", "who", "whom", "whose", "where", "when", "why", "how", "which",
        "is", "are", "am", "was", "were", "do", "does", "did",
        "can", "could", "will", "would", "should", "shall", "may", "might", "have", "has",
    }
)  # fmt: skip
CHINESE_QUESTION_WORDS = ("什么", "为什么", "怎么", "怎样", "哪", "谁", "几", "多少", "是不是", "能不能", "可不可以")


def punctuate(text: str) -> str:
    """``text`` with the mark a punctuation model would end the segment with (unchanged when
    empty or already ending with a final mark). CJK text gets 。/？, other text ./?."""
    body = text.rstrip()
    if not body or ends_sentence(body):
        return text
    if any(is_cjk(ch) for ch in body):
        question = body.lstrip().startswith(CHINESE_QUESTION_WORDS)
        return body + ("？" if question else "。")
    first = body.split()[0].lower()
    return body + ("?" if first in ENGLISH_QUESTION_WORDS else ".")
