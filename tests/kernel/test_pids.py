"""alloc_pid(): pids in order below pid_max, wrapping to RESERVED_PIDS, EAGAIN when full."""

from __future__ import annotations

import errno

import pytest

from ksmfs.kernel import Kernel, KsmError
from ksmfs.kernel.kernel import FIRST_PID, PID_MAX_DEFAULT, PID_MAX_LIMIT, RESERVED_PIDS


def test_pids_wrap_to_reserved_pids_and_reuse_freed_ones():
    k = Kernel()
    k.set_pid_max(RESERVED_PIDS + 10)
    pids = [k.spawn("t") for _ in range(RESERVED_PIDS + 10 - FIRST_PID)]
    assert pids == list(range(FIRST_PID, RESERVED_PIDS + 10))
    assert k.last_pid == pids[-1] and k.total_forks == pids[-1]
    with pytest.raises(KsmError) as err:
        k.spawn("full")
    assert err.value.errno == errno.EAGAIN
    k.exit(200)  # below RESERVED_PIDS: never reused after the wrap
    with pytest.raises(KsmError):
        k.spawn("full")
    k.exit(RESERVED_PIDS + 5)
    k.exit(RESERVED_PIDS + 2)
    assert k.fork(pids[0]) == RESERVED_PIDS + 2  # the cursor wrapped: lowest free >= 300
    assert k.spawn("next") == RESERVED_PIDS + 5


@pytest.mark.parametrize("value", [RESERVED_PIDS, PID_MAX_LIMIT + 1, -1])
def test_pid_max_range(value):
    k = Kernel()
    with pytest.raises(KsmError) as err:
        k.set_pid_max(value)
    assert err.value.errno == errno.EINVAL and k.pid_max == PID_MAX_DEFAULT
