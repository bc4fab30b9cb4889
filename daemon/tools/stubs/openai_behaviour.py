"""The OpenAI-compatible stand-in's script: how it answers (``OpenAiBehaviour``, including the
misbehaviours a client has to survive), what it records of each request, and the vLLM-like
validation of a chat request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISBEHAVIOURS = (
    None,
    "refuse",  # nothing listens on the port: connection refused
    "hang",  # accept and read the request, never send the headers
    "error_500",  # chat completions answer 500 with an error body
    "error_midstream",  # 200, a few content chunks, then data: {"error": ...} and [DONE]
    "cut",  # 200, a few content chunks, then the connection drops (no [DONE])
    "garbage",  # 200, a few content chunks, then a data line that is not JSON
    "truncate",  # 200, a few content chunks, then [DONE] without a finish chunk (llama.cpp preempted)
    "health_503",  # GET /health answers 503: the engine is dead
    "starting",  # not listening for starting_s after start(), then up (the model is loading)
    "ping_only",  # 200 and event-stream headers, then only ``: ping`` comments every ping_interval_s
    "trickle",  # the normal stream, one byte every trickle_interval_s (a keep-alive that never ends)
    "flood",  # 200, an enormous answer (flood_chars, max_tokens ignored) as fast as possible
)


@dataclass
class OpenAiBehaviour:
    """How the stand-in answers. Tests may swap ``stub.behaviour`` between requests."""

    answers: dict[str, str] = field(default_factory=dict)
    """Question substring (case-insensitive, matched against the last user message) -> answer."""
    default_answer: str = "你好！我是MOSS，很高兴为你服务。"
    first_token_delay_s: float = 0.05
    """From the request to the first text chunk (queueing plus prefill)."""
    tokens_per_s: float = 50.0
    """Pace of the content chunks after the first; 0 sends them as fast as possible."""
    style: str = "vllm"
    """vllm: compact raw-UTF-8 JSON, role+"" first chunk, stop_reason, usage chunk.
    llama_cpp: ", "-separated \\u-escaped JSON, CRLF events, role-only first chunk, an empty
    content chunk before the finish chunk, no stop_reason, no usage, ``: ping`` comments,
    no /health, any model name accepted, validation errors as 500, a new request cuts the
    running stream."""
    error_shape: str = "new"
    """Error bodies: "new" = {"error": {...}} (vLLM >= 0.10.1), "old" = flat {"object": "error", ...}."""
    api_key: str | None = None
    """When set, /v1/* need ``Authorization: Bearer <api_key>`` (401 otherwise)."""
    models: list[str] = field(default_factory=lambda: ["moss"])
    """Served model names; the first is used when a request names none."""
    raw_chunks: list[bytes] | None = None
    """When set, a valid streaming request gets exactly these bytes as its body, one write each."""
    raw_chunk_delay_s: float = 0.01
    """Pause between raw chunks, so that they tend to arrive in separate reads."""
    misbehave: str | None = None
    """One of MISBEHAVIOURS."""
    misbehave_after_chunks: int = 2
    """Content chunks sent before error_midstream / cut / garbage / truncate strike."""
    starting_s: float = 0.5
    """misbehave="starting": how long the port refuses connections (model loading)."""
    ping_interval_s: float = 15.0
    """llama_cpp style: a ``: ping - <time>`` comment whenever the stream was quiet this long
    (misbehave="ping_only": the pace of its pings, in either style)."""
    trickle_interval_s: float = 1.0
    """misbehave="trickle": the pause before each byte of the stream."""
    flood_chars: int = 200_000
    """misbehave="flood": the answer's length (the scripted answer repeated)."""

    def __post_init__(self) -> None:
        if self.style not in ("vllm", "llama_cpp"):
            raise ValueError(f"style must be 'vllm' or 'llama_cpp', not {self.style!r}")
        if self.error_shape not in ("new", "old"):
            raise ValueError(f"error_shape must be 'new' or 'old', not {self.error_shape!r}")
        if self.trickle_interval_s <= 0 or self.ping_interval_s <= 0 or self.flood_chars < 1:
            raise ValueError("trickle_interval_s and ping_interval_s must be > 0, flood_chars >= 1")
        if self.misbehave not in MISBEHAVIOURS:
            raise ValueError(f"misbehave must be one of {MISBEHAVIOURS}, not {self.misbehave!r}")

    def answer_for(self, messages: list[dict[str, Any]]) -> str:
        """The scripted answer for the last user message, or ``default_answer``."""
        question = ""
        for message in reversed(messages):
            if message.get("role") == "user":
                question = content_text(message.get("content")).lower()
                break
        for key, answer in self.answers.items():
            if key.lower() in question:
                return answer
        return self.default_answer


@dataclass(frozen=True)
class ReceivedRequest:
    """One request the stand-in received (``stub.requests``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """Parsed JSON, None when empty, the raw text when it was not JSON."""
    at: float
    """time.monotonic() on arrival."""
    client: tuple[str, int] | None = None
    """The peer's (host, port): a new port means a new connection."""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def validate_request(body: Any) -> str | None:
    """vLLM-like request validation; the problem as a message, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list) or not messages:
        return "messages: Input should be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages.{i}: Input should be an object with a role"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{i}.content: Input should be a valid string"
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return "stream: Input should be a valid boolean"
    if body.get("stream_options") is not None and not stream:
        return "Stream options can only be defined when `stream=True`."
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop))
    ):
        return "stop: Input should be a valid string or list of strings"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"{key}: Input should be a positive integer"
    return None
