"""PaddleSpeech streaming TTS clients: HTTP and websocket (docs/protocols.md, "PaddleSpeech streaming TTS").

Both yield PCM (int16 mono at ``await sample_rate()``) chunk by chunk as it arrives, in
whole samples. A sentence counts as spoken only if audio came and the stream ended properly:
zero audio, a cut stream, websocket status -1 or base64 that does not decode raise TtsError
("PaddleSpeech: HTTP stream", "PaddleSpeech: websocket"). Leaving the ``synthesize`` context
early closes the connection at once, which is the only way to cancel a synthesis
("PaddleSpeech: cancelling").

The protocols live in ``tts_http`` and ``tts_websocket``, what they share in ``tts_common``;
this module picks one from the URL and re-exports the public names.
"""

from __future__ import annotations

import ssl

import httpx

from daemon.clients.tts_common import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, TtsAudioStream
from daemon.clients.tts_http import PaddleSpeechHttpTts, build_http_request
from daemon.clients.tts_websocket import PaddleSpeechWsTts, build_ws_text_message
from daemon.config import TtsSettings
from states.ports import TtsClient

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "PaddleSpeechHttpTts",
    "PaddleSpeechWsTts",
    "TtsAudioStream",
    "build_http_request",
    "build_ws_text_message",
    "make_tts",
]


def make_tts(settings: TtsSettings, http: httpx.AsyncClient, *, tls: ssl.SSLContext | None = None) -> TtsClient:
    """The client for ``settings.endpoint``: ws(s):// gives the websocket protocol, http(s):// HTTP.
    ``tls``: the TTS's context (``http`` was built with it), for the websocket; None: built from
    ``settings`` when a wss:// connection needs it."""
    if settings.protocol == "websocket":
        return PaddleSpeechWsTts(settings, http=http, tls=tls)
    return PaddleSpeechHttpTts(settings, http)
