"""The error tree drawn in daemon/errors.py's docstring is the real class hierarchy."""

from __future__ import annotations

import re

import daemon.errors
import hardware.errors

_NODE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)(?P<rest>.*)$")
_ALSO = re.compile(r"\(also an? (\w+)\)")


def drawn_tree() -> list[tuple[str, str | None, list[str]]]:
    """(class, drawn parent or None for a root, extra parents named by "(also a X)") per line."""
    doc = daemon.errors.__doc__ or ""
    nodes: list[tuple[str, str | None, list[str]]] = []
    stack: list[tuple[int, str]] = []  # (depth, name) of the open ancestors
    for line in doc.splitlines():
        if not line.startswith("    ") or not line.strip():
            continue
        match = _NODE.match(line[4:])
        if match is None:
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        nodes.append((match["name"], parent, _ALSO.findall(match["rest"])))
        stack.append((depth, match["name"]))
    return nodes


def test_the_drawing_has_every_exported_error_once() -> None:
    drawn = [name for name, _, _ in drawn_tree()]
    exported = [name for name in daemon.errors.__all__ if isinstance(getattr(daemon.errors, name), type)]
    assert sorted(drawn) == sorted(exported)


def test_every_drawn_edge_is_a_real_subclass() -> None:
    for name, parent, also in drawn_tree():
        cls = getattr(daemon.errors, name)
        assert issubclass(cls, Exception), name
        for base in [parent, *also]:
            if base is not None:
                assert issubclass(cls, getattr(daemon.errors, base)), f"{name} is not a {base}"


def test_the_roots_are_roots() -> None:
    roots = [name for name, parent, _ in drawn_tree() if parent is None]
    assert roots == ["VoiceDaemonError", "HardwareError"]
    assert not issubclass(daemon.errors.HardwareError, daemon.errors.VoiceDaemonError)
    assert daemon.errors.HardwareError is hardware.errors.HardwareError


def test_no_undrawn_subclass_relation_between_drawn_classes() -> None:
    """Every is-a between two drawn classes is an edge of the drawing or implied by one."""
    nodes = drawn_tree()
    parents = {name: [p for p in [parent, *also] if p is not None] for name, parent, also in nodes}

    def ancestors(name: str) -> set[str]:
        found: set[str] = set()
        todo = list(parents[name])
        while todo:
            base = todo.pop()
            if base not in found:
                found.add(base)
                todo += parents[base]
        return found

    for name in parents:
        cls = getattr(daemon.errors, name)
        real = {other for other in parents if other != name and issubclass(cls, getattr(daemon.errors, other))}
        assert real == ancestors(name), name
