"""What the LLM and TTS HTTP clients share: a connection pool that does not race the server's
keep-alive timeout, and one more try when it lost that race anyway.

uvicorn, which serves vLLM and PaddleSpeech, closes a connection that has been idle for 5 s. A
request sent on such a connection just as the server closes it fails before any response
("Server disconnected without sending a response", or a read error), and the first sentence of
an answer would be lost. So idle connections are dropped after ``KEEPALIVE_EXPIRY_S``, and a
request that still fails that way, before any response, is sent once more on a new connection:
the server never answered it, so nothing is generated twice that anyone heard.
"""

from __future__ import annotations

import ssl

import httpx
import structlog

log = structlog.get_logger()

KEEPALIVE_EXPIRY_S = 4.0
"""Below uvicorn's 5 s keep-alive timeout (vLLM and PaddleSpeech use its default)."""

STALE_CONNECTION_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
"""What a request on a connection the server has closed fails with, before any response."""


def make_http_client(tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """An AsyncClient for one service. ``tls``: a context shared between clients (each new one
    costs ~25 ms to build); None builds the default."""
    return httpx.AsyncClient(
        verify=tls if tls is not None else True,
        limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
    )


async def warm_up_connection(
    http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None, timeout_s: float, service: str
) -> None:
    """GET ``url`` and drop the answer: the pool keeps the connection open (``KEEPALIVE_EXPIRY_S``)
    for the request that follows. Never raises; a failure is only logged, as the request itself
    will report a dead server."""
    try:
        response = await http.get(url, headers=headers, timeout=timeout_s)
        await response.aclose()
    except httpx.HTTPError as exc:
        log.debug("warm_up_failed", service=service, url=url, error=f"{type(exc).__name__}: {exc}")


async def send_retrying_stale(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``http.send(request, stream=True)``, sent once more if the connection died before any
    response (see the module docstring). Other errors, and a second failure, are raised."""
    try:
        return await http.send(request, stream=True)
    except STALE_CONNECTION_ERRORS as exc:
        log.info("http_retry", url=str(request.url), reason=f"{type(exc).__name__}: {exc}")
    return await http.send(request, stream=True)
