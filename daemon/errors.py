"""The exceptions moss-voice raises, as two trees.

    VoiceDaemonError
    ├── ConfigError            a wrong key, type or value in the TOML file
    ├── ControlError           the control API cannot start (address in use, no token, ...)
    └── ServiceError           a remote service failed; ``.service`` is "asr", "llm" or "tts"
        ├── AsrError
        │   ├── AsrTimeout         (also a ServiceTimeout)
        │   └── AsrDown            (also a ServiceDown)
        ├── LlmError
        │   ├── LlmAuthError       401: wrong or missing API key (never retried)
        │   ├── LlmNotFoundError   404: the model name is not served
        │   ├── LlmTimeout         (also a ServiceTimeout)
        │   └── LlmDown            (also a ServiceDown)
        ├── TtsError
        │   ├── TtsTimeout         (also a ServiceTimeout)
        │   └── TtsDown            (also a ServiceDown)
        ├── ServiceTimeout     any service that did not answer in time
        └── ServiceDown        every endpoint of the service is marked down: failed at once, untried

    HardwareError              a device failed; ``.service`` is "audio"

``HardwareError`` is a root of its own, not a ``VoiceDaemonError``: it is defined in
``hardware.errors`` because ``hardware`` may not import ``daemon``, and is re-exported here so
that the daemon imports every error from one module. Code that must catch everything
moss-voice raises on purpose catches both roots. ``tests/test_error_tree.py`` checks that this
drawing is the real class hierarchy.

Clients translate library errors with ``raise AsrError(...) from exc``; nothing from httpx or
websockets escapes a client. The state machine only needs ``.service`` to log ``turn_failed``.
"""

from __future__ import annotations

from hardware.errors import HardwareError

__all__ = [
    "AsrDown",
    "AsrError",
    "AsrTimeout",
    "ConfigError",
    "ControlError",
    "HardwareError",
    "LlmAuthError",
    "LlmDown",
    "LlmError",
    "LlmNotFoundError",
    "LlmTimeout",
    "ServiceDown",
    "ServiceError",
    "ServiceTimeout",
    "TtsDown",
    "TtsError",
    "TtsTimeout",
    "VoiceDaemonError",
]


class VoiceDaemonError(Exception):
    """Base of every error moss-voice raises on purpose."""


class ConfigError(VoiceDaemonError):
    """The configuration is wrong. ``problems`` lists every wrong key, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ControlError(VoiceDaemonError):
    """The control API cannot start: the message names the address and what is wrong with it."""


class ServiceError(VoiceDaemonError):
    """A remote service failed or sent something we cannot use."""

    service: str = "service"


class ServiceTimeout(ServiceError):
    """A remote service did not answer in time."""


class ServiceDown(ServiceError):
    """Every endpoint of a service failed recently and is being probed in the background: the
    request was not even tried (daemon/clients/guarded.py)."""


class AsrError(ServiceError):
    service = "asr"


class LlmError(ServiceError):
    service = "llm"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LlmAuthError(LlmError):
    """401: the API key is wrong or missing. Retrying cannot help."""


class LlmNotFoundError(LlmError):
    """404: the model name is not served by this server."""


class TtsError(ServiceError):
    service = "tts"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status the server answered with, when that is the failure."""


class AsrTimeout(AsrError, ServiceTimeout):
    pass


class LlmTimeout(LlmError, ServiceTimeout):
    pass


class TtsTimeout(TtsError, ServiceTimeout):
    pass


class AsrDown(AsrError, ServiceDown):
    pass


class LlmDown(LlmError, ServiceDown):
    pass


class TtsDown(TtsError, ServiceDown):
    pass
