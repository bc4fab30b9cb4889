"""Shared test set-up: a clean structlog per test, so captured logs never leak between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True, scope="session")
def _quiet_transitions() -> None:
    """transitions warns at each machine build that model_override keeps our typed trigger stubs."""
    import logging

    logging.getLogger("transitions.core").setLevel(logging.ERROR)
