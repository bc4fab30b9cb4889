"""Logging: a configuration never outlives the next one (no logger is cached at an old level)."""

from __future__ import annotations

import io
import json

import structlog
from structlog.testing import capture_logs

from daemon.logs import configure_logging
from states import barge_in


def test_a_module_logger_follows_the_current_configuration() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    barge_in.log.info("quiet_at_warning")
    barge_in.log.warning("heard_at_warning", n=1)
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["heard_at_warning"]
    structlog.reset_defaults()
    with capture_logs() as logs:
        barge_in.log.info("heard_after_reset")
    assert [e["event"] for e in logs] == ["heard_after_reset"]
