"""The doctor's system checks for the user the daemon runs as: its groups, read/write on the
sound (and GPIO) device nodes, the sound server it can reach, the control socket's directory.

Permissions are worked out from the nodes' owner, group and mode bits for that user (so
``--user moss-voice`` can be checked from an administrator's shell); ACLs that logind grants to
a desktop session are not seen, which errs on the safe side for a service.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Settings
from daemon.doctor import Finding, Result

CONNECT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gids: frozenset[int]
    groups: frozenset[str]

    @classmethod
    def lookup(cls, name: str | None = None) -> User:
        """``name``, or the current user. Raises KeyError for an unknown name."""
        entry = pwd.getpwnam(name) if name is not None else pwd.getpwuid(os.getuid())
        gids = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
        groups = set()
        for gid in gids:
            try:
                groups.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                groups.add(str(gid))
        return cls(entry.pw_name, entry.pw_uid, gids, frozenset(groups))


def gpio_pins(s: Settings) -> list[int]:
    leds = s.leds
    pins = [s.wake.button.pin, leds.idle, leds.listening, leds.thinking, leds.speaking]
    return [pin for pin in pins if pin is not None]


def uses_sound_card(s: Settings) -> bool:
    return s.audio.input.startswith("pyaudio:") or s.audio.output.startswith("pyaudio:")


def check_groups(user: User, s: Settings) -> list[Finding]:
    """``audio`` (a FAIL only when a sound card is configured), ``gpio`` when a pin is."""
    needed = ["audio"] + (["gpio"] if gpio_pins(s) else [])
    findings = []
    for group in needed:
        name = f"group {group}"
        if user.uid == 0:
            findings.append(
                Finding(name, "ok", f"{user.name}: root can use every device (the service should not run as root)")
            )
        elif group in user.groups:
            findings.append(Finding(name, "ok", f"{user.name} is in {group}"))
        else:
            exists = _group_exists(group)
            required = uses_sound_card(s) if group == "audio" else exists
            result: Result = "FAIL" if required else "warn"
            fix = f"sudo usermod -aG {group} {user.name} (then log in again / restart the service)"
            if not exists:
                fix = f"this system has no {group} group: give {user.name} access to the device nodes another way"
            findings.append(Finding(name, result, f"{user.name} is not in {group}", fix))
    return findings


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def can_read_write(mode: int, owner: int, group: int, user: User) -> bool:
    """Unix permission bits for ``user`` (root passes)."""
    return user.uid == 0 or _bits(mode, owner, group, user, stat.S_IRUSR | stat.S_IWUSR)


def check_device_nodes(user: User, s: Settings, *, dev: Path = Path("/dev")) -> list[Finding]:
    """/dev/snd/* (when a sound card is configured) and /dev/gpiochip* (when a pin is)."""
    findings = []
    uses_card = uses_sound_card(s)
    sets: list[tuple[str, list[Path], bool]] = [("/dev/snd", sorted((dev / "snd").glob("*")), uses_card)]
    if gpio_pins(s):
        sets.append(("/dev/gpiochip*", sorted(dev.glob("gpiochip*")), True))
    for label, nodes, needed in sets:
        result: Result = "FAIL" if needed else "warn"
        if not nodes:
            fix = "no device visible: is the hardware connected (in a container: passed through)?"
            findings.append(Finding(label, result, f"no {label} nodes", fix))
            continue
        denied = [str(p) for p in nodes if not _node_ok(p, user)]
        if denied:
            fix = f"add {user.name} to the nodes' group ({_node_group(nodes[0])}) or fix the udev rules"
            shown = ", ".join(denied[:4]) + (" ..." if len(denied) > 4 else "")
            findings.append(Finding(label, result, f"{user.name} cannot read/write {shown}", fix))
        else:
            findings.append(Finding(label, "ok", f"{user.name} can read/write all {len(nodes)} node(s)"))
    return findings


def _node_ok(path: Path, user: User) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return can_read_write(st.st_mode, st.st_uid, st.st_gid, user)


def _node_group(path: Path) -> str:
    try:
        return grp.getgrgid(path.stat().st_gid).gr_name
    except (OSError, KeyError):
        return "?"


def sound_server_sockets(env: Mapping[str, str], uid: int) -> list[Path]:
    """Where a PulseAudio or PipeWire socket would be for this user, most specific first."""
    candidates: list[Path] = []
    server = env.get("PULSE_SERVER", "")
    for part in server.split():
        path = part.removeprefix("unix:")
        if path.startswith("/"):
            candidates.append(Path(path))
    runtime_dirs = [env.get("XDG_RUNTIME_DIR", ""), f"/run/user/{uid}"]
    for runtime in dict.fromkeys(d for d in runtime_dirs if d):
        candidates += [Path(runtime) / "pulse" / "native", Path(runtime) / "pipewire-0"]
    return list(dict.fromkeys(candidates))


def _reachable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def check_sound_server(user: User, s: Settings, env: Mapping[str, str]) -> list[Finding]:
    """Which set-up this is: a sound server (the user unit) or ALSA directly (the system unit)."""
    uses_card = uses_sound_card(s)
    server = env.get("PULSE_SERVER")
    up = [p for p in sound_server_sockets(env, user.uid) if p.exists() and _reachable(p)]
    if up:
        kind = "PipeWire" if up[0].name.startswith("pipewire") else "PulseAudio (or PipeWire's pulse)"
        detail = f"{kind} at {up[0]}: pyaudio:default goes through it"
        fix = (
            ""
            if not uses_card
            else "run moss-voice as a user unit of this user (systemctl --user, loginctl enable-linger)"
        )
        return [Finding("sound server", "ok", detail, fix)]
    if server and not server.startswith(("unix:", "/")):
        return [Finding("sound server", "ok", f"PULSE_SERVER={server} (a network server, not probed)")]
    looked = ", ".join(str(p) for p in sound_server_sockets(env, user.uid)) or "no XDG_RUNTIME_DIR"
    detail = f"no PulseAudio or PipeWire socket reachable ({looked}): ALSA devices directly"
    fix = ""
    if uses_card:
        fix = "the system unit's set-up: name the card (pyaudio:NAME, `moss-voice devices`)"
        fix += "; for PipeWire use the user unit"
    return [Finding("sound server", "ok" if not uses_card else "warn", detail, fix)]


def check_control_socket(user: User, s: Settings) -> list[Finding]:
    listen = s.control.listen
    if listen is None or not listen.startswith("unix:"):
        return []
    folder = Path(listen.removeprefix("unix:")).parent
    if not folder.is_dir():
        fix = f"create it (RuntimeDirectory= in the unit, or mkdir -p {folder} && chown {user.name} {folder})"
        return [Finding("control socket", "FAIL", f"{folder} does not exist", fix)]
    st = folder.stat()
    writable = user.uid == 0 or _bits(st.st_mode, st.st_uid, st.st_gid, user, stat.S_IWUSR | stat.S_IXUSR)
    if not writable:
        return [
            Finding(
                "control socket",
                "FAIL",
                f"{user.name} cannot create a socket in {folder}",
                f"chown {user.name} {folder}",
            )
        ]
    return [Finding("control socket", "ok", f"{user.name} can create {listen.removeprefix('unix:')}")]


def _bits(mode: int, owner: int, group: int, user: User, user_bits: int) -> bool:
    """``user_bits`` given as the owner's bits, checked in the class that applies to ``user``."""
    shift = 0 if user.uid == owner else 3 if group in user.gids else 6
    wanted = user_bits >> shift
    return mode & wanted == wanted


def system_findings(user: User, s: Settings, env: Mapping[str, str]) -> Sequence[Finding]:
    return [
        *check_groups(user, s),
        *check_device_nodes(user, s),
        *check_sound_server(user, s, env),
        *check_control_socket(user, s),
    ]
