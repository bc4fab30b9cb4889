"""What the fuzz tests (tests/test_fuzz_*.py) share: a reproducible hypothesis profile, byte
mutations of real traffic (flip, cut, duplicate, insert, delete), random re-chunking, and JSON
values of any shape.

Reproducible: ``derandomize`` draws the same examples on every run and no example database is
read or written, so CI sees what a developer saw; a failure found once is kept as an explicit
``@example`` in the test that found it.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""The profile of every fuzz test; a test lowers ``max_examples`` when one example is costly."""


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


MEANINGFUL = [b"\n", b"\r", b"\r\n", b"\n\n", b":", b"=", b'"', b"\\", b"{", b"}", b"[", b"]", b"\xff"]
MEANINGFUL += [b"\xe4\xbd", b"\x00", b"null", b"true", b"-1", b"1e999", b"data: ", b"[DONE]", b"{}"]
"""Bytes that mean something to one of the parsers: line ends, JSON syntax, a cut UTF-8 character."""


@st.composite
def mutated(draw: st.DrawFn, original: bytes, *, max_edits: int = 4) -> bytes:
    """``original`` after up to ``max_edits`` edits: a flipped byte, a cut, a duplicated slice,
    inserted bytes (random, or bytes that mean something to a parser), a deleted slice."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(("flip", "cut", "duplicate", "insert", "delete")))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "duplicate":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end]
        elif kind == "insert":
            data[at:at] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from(MEANINGFUL),
                )
            )
        elif kind == "delete":
            end = draw(st.integers(at, min(len(data), at + 16)))
            del data[at:end]
    return bytes(data)


@st.composite
def chunked(draw: st.DrawFn, data: bytes, *, max_cuts: int = 12) -> list[bytes]:
    """``data`` cut at random places into pieces (as the network and httpx re-chunk it)."""
    if len(data) < 2:
        return [data] if data else []
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=max_cuts)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
"""Any JSON value."""


@st.composite
def mutated_object(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    """A real message with some fields replaced by any JSON value, some removed, some added."""
    out = dict(original)
    for key in list(original):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            out[key] = draw(JSON_VALUES)
        elif choice == 1:
            del out[key]
    out.update(draw(st.dictionaries(st.sampled_from([*original, "error", "extra"]), JSON_VALUES, max_size=2)))
    return out
