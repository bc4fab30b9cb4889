"""Local wake word engines behind one port (``states.ports.HotwordEngine``, matched by shape:
``hardware`` does not import ``states``).

Each engine lives in its own module and imports its vendor library only when it is built, so
importing this package costs nothing. ``make_hotword`` picks the engine by its configured name
(``wake.hotword.engine``). The ``asr`` engine (the wake phrase spotted by the remote ASR) is not
here: it needs the network client, so the daemon builds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

from hardware.hotword.errors import HotwordError

__all__ = ["ENGINES", "Hotword", "HotwordError", "make_hotword"]


class Hotword(Protocol):
    """What every engine here is: the ``HotwordEngine`` port of ``states.ports``, by shape."""

    phrases: tuple[str, ...]

    def process(self, pcm: bytes, speech: bool) -> str | None: ...

    def reset(self) -> None: ...

    async def aclose(self) -> None: ...


ENGINES: dict[str, str] = {
    "microwakeword": "hardware.hotword.microwakeword:MicroWakeWordHotword",
    "pocketsphinx": "hardware.hotword.pocketsphinx:PocketsphinxHotword",
    "sherpa-onnx": "hardware.hotword.sherpa:SherpaOnnxHotword",
}
"""Engine name -> ``module:Class``. Every class is built as
``Cls(phrases, *, threshold=None, model_dir=None)`` and raises ``HotwordError`` when it cannot."""


def make_hotword(
    engine: str,
    phrases: Sequence[str],
    *,
    threshold: float | None = None,
    model_dir: str | None = None,
) -> Hotword:
    """Build the local hotword engine ``engine`` listening for ``phrases``.

    Loading a model takes from a few milliseconds (microwakeword) to a fraction of a second
    (pocketsphinx); call it before the audio starts, or through ``asyncio.to_thread``.
    """
    target = ENGINES.get(engine)
    if target is None:
        known = ", ".join(sorted(ENGINES))
        raise HotwordError(f"unknown hotword engine {engine!r}; the local engines are: {known}")
    if isinstance(phrases, str):
        raise HotwordError(f"hotword engine {engine!r}: phrases must be a list, got the string {phrases!r}")
    if not phrases:
        raise HotwordError(f"hotword engine {engine!r}: no phrases to listen for")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            missing = f"hotword engine {engine!r} is not part of this build ({module_name} is missing)"
            raise HotwordError(missing) from exc
        raise
    cls = getattr(module, class_name)
    built: Hotword = cls(tuple(phrases), threshold=threshold, model_dir=model_dir)
    return built
