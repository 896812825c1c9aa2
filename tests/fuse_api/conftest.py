"""Fixtures for calling the FUSE Operations directly, without a mount (s3ql's t3 tier).

pyfuse3's RequestContext and SetattrFields have read-only attributes, so the tests pass
duck-typed stand-ins, as s3ql's t3_fs_api.py does.
"""

from __future__ import annotations

import logging

import pytest
from fuseapi_support import FakeClock

from ksmfs.fuse.ops import KsmfsOperations
from ksmfs.kernel import Kernel
from ksmfs.kfs import Tree


@pytest.fixture
def kernel() -> Kernel:
    return Kernel(version="6.18")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stores() -> list:
    return []


@pytest.fixture
def invalidated() -> list:
    return []


@pytest.fixture
def ops(kernel, clock, stores, invalidated) -> KsmfsOperations:
    return KsmfsOperations(
        Tree(kernel),
        on_store=lambda node, data: stores.append((node.path, data)),
        invalidate_entry=lambda parent, name: invalidated.append((parent, name)),
        clock_ns=clock,
    )


@pytest.fixture(autouse=True)
def _no_logged_errors(caplog):
    """A bug in the adapter turns into EIO plus a log line: fail the test on such lines
    (checklogs-lite, style guide item 13).  Tests that provoke one clear caplog."""
    caplog.set_level(logging.DEBUG, logger="ksmfs")
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not bad, "errors logged: " + "; ".join(r.getMessage() for r in bad)
