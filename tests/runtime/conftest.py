"""The runtime (ksmd pacing, the scenario timeline, mount checks) without a mount."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _no_logged_errors(caplog):
    """A runtime bug shows as a logged error or traceback: fail the test on one."""
    caplog.set_level(logging.DEBUG, logger="ksmfs")
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not bad, "errors logged: " + "; ".join(r.getMessage() for r in bad)
