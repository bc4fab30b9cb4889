"""The scripted answers the stand-in LLM gives in the demo, the tests and the benchmarks."""

from __future__ import annotations

DEMO_QUESTION = "what is the weather like today"

ANSWERS: dict[str, str] = {
    "weather": (
        "It is sunny today, with a high of 24 degrees. A light breeze comes from the east, "
        "so it is a good day for a walk in the park."
    ),
    "kitchen light": "Okay, I have turned on the kitchen light.",
    "time": "It is half past ten in the morning.",
    "joke": "Why did the robot go on holiday? Because it needed to recharge its batteries!",
    "who are you": "I am MOSS, the voice of this robot. I can answer questions and help you find your way.",
    "forward": "Moving forward two meters. Please stand clear.",
    "hello": "Hello! How can I help you today?",
    "天气": "今天天气晴朗，最高气温二十四度。东风轻拂，适合去公园散步。",
    "你好": "你好！我是机器人助手，有什么可以帮你的吗？",
}

DEFAULT_ANSWER = "Sorry, I did not quite catch that. Could you say it again?"
