"""The JSON object inside one websocket text frame: what FunASR and PaddleSpeech's websocket send."""

from __future__ import annotations

import json
from typing import Any

EXCERPT_CHARS = 120


def json_object(raw: str | bytes) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object. ValueError says what it was instead, with an excerpt, so a
    client can name its server and raise its own error: ``sent {reason}``."""
    if isinstance(raw, bytes):
        raise ValueError(f"a binary frame ({len(raw)} bytes) instead of a JSON object")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the json module follows
        raise ValueError(f"malformed JSON: {_excerpt(raw)}") from None
    if not isinstance(message, dict):
        raise ValueError(f"a JSON {type(message).__name__} instead of an object: {_excerpt(raw)}")
    return message


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "...")
