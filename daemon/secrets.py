"""Where the secrets come from: the environment, or systemd credentials; and never further.

Two secrets exist, the LLM's API key and the control API's token. Each comes from its
environment variable or from its systemd credential, a file of that name in
``$CREDENTIALS_DIRECTORY`` (systemd sets it for a unit with ``LoadCredential=`` or
``ImportCredential=``). When both are set, the credential wins: it is the channel the
administrator set up on purpose for this unit (readable only by the service's user, inherited by
no child process), while an environment variable may be left over in an ``EnvironmentFile`` or
come from wherever the daemon was started. An empty credential counts as not set (the system
unit loads an empty default when the administrator made none).

The values are then kept out of the logs (``daemon.logs``' redaction) and out of the environment
of the hooks (``child_environment``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from daemon.config import API_KEY_ENV, CONTROL_TOKEN_ENV, Settings

__all__ = [
    "CREDENTIALS",
    "CREDENTIALS_DIRECTORY",
    "child_environment",
    "known_secrets",
    "secret_values",
    "with_credentials",
]

CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
CREDENTIALS = {API_KEY_ENV: "llm_api_key", CONTROL_TOKEN_ENV: "control_token"}
"""Environment variable -> the name of the systemd credential that may hold the same secret."""
MAX_CREDENTIAL_BYTES = 64 * 1024
"""A key or a token is short; a bigger file is a mistake (a wrong path), not a secret."""


def _read_credential(directory: Path, name: str) -> str | None:
    """The credential's text without surrounding whitespace (``echo`` and editors add a newline);
    None when the file is missing or empty. Raises ValueError naming the problem."""
    path = directory / name
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CREDENTIAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"credential {name}: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise ValueError(f"credential {name}: {path} is over {MAX_CREDENTIAL_BYTES} bytes, not a key")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"credential {name}: {path} is not UTF-8 text") from exc
    return text or None


def with_credentials(env: Mapping[str, str], problems: list[str] | None = None) -> dict[str, str]:
    """``env`` with each secret variable set from its credential, when ``$CREDENTIALS_DIRECTORY``
    (of ``env``) has a non-empty one. A credential that cannot be read is appended to
    ``problems`` (and the environment's value, if any, kept)."""
    merged = dict(env)
    directory = env.get(CREDENTIALS_DIRECTORY)
    if not directory:
        return merged
    for variable, name in CREDENTIALS.items():
        try:
            value = _read_credential(Path(directory), name)
        except ValueError as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        if value is not None:
            merged[variable] = value
    return merged


def known_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """Every secret value the environment and the credentials hold (both, when they differ)."""
    values = [env.get(variable) for variable in CREDENTIALS]
    values += [with_credentials(env).get(variable) for variable in CREDENTIALS]
    return tuple(dict.fromkeys(v for v in values if v))


def secret_values(settings: Settings) -> tuple[str, ...]:
    """The secrets ``settings`` carries: what the logs must never show."""
    return tuple(v for v in (settings.llm.api_key, settings.control.token) if v)


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a process the daemon starts (a hook): without the secret variables
    and without the way to the credentials."""
    return {k: v for k, v in env.items() if k not in CREDENTIALS and k != CREDENTIALS_DIRECTORY}
