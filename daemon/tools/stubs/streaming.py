"""What the HTTP stand-ins share: a streaming response that notices a client gone at once."""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    """Closes the body generator as soon as the response ends, so that a client that went away
    is seen at once (GeneratorExit in the generator), not whenever it is garbage-collected: the
    stand-ins time disconnects from that moment."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
