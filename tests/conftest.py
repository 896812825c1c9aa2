"""Options and markers for the whole suite.

By default the suite runs what anyone can run on a clone: no test drives the machine's
real KSM and no long test runs. Two markers are opt-in:

* ``realkernel``: the test reads or writes the machine's real /sys/kernel/mm/ksm (or runs
  real processes under KSM). The real KSM is global state; these tests run only with
  ``--run-realkernel``, and even then skip with the reason where the interface is absent
  or not writable (no CONFIG_KSM, not root, a read-only /sys as in containers).
* ``slow``: minutes rather than seconds (the README's setup run on a fresh clone, the load
  test). They run only with ``--run-slow``.

``.ci/run`` passes both flags.

pytest puts the folder of this file (tests/) on sys.path, so every tier imports the one
table of answers measured on the live kernel, ksm_cases.py, instead of keeping a copy.

Tests marked ``fuse`` (real mounts) skip, with the reason, where this user cannot mount
FUSE: no /dev/fuse (a container run without ``--device /dev/fuse``), no fusermount3, or a
/dev/fuse this user may not open (Debian's is 0600 root: FUSE mounts are for root there).
"""

from __future__ import annotations

import os
import shutil

import pytest

OPT_IN = {
    "realkernel": ("--run-realkernel", "drives the machine's real KSM"),
    "slow": ("--run-slow", "takes minutes"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    for marker, (flag, what) in OPT_IN.items():
        parser.addoption(
            flag,
            action="store_true",
            default=False,
            help=f"also run the tests marked {marker!r} ({what})",
        )


def fuse_unusable() -> str | None:
    """Why this user cannot mount a FUSE file system here (None: it can)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (in a container: --device /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return f"/dev/fuse is not open to this user (uid {os.getuid()})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = fuse_unusable()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"fuse: {reason}")
        for item in items:
            if "fuse" in item.keywords:
                item.add_marker(skip)
    for marker, (flag, what) in OPT_IN.items():
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"{marker}: {what}; run with {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
