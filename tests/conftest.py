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
"""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, (flag, what) in OPT_IN.items():
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"{marker}: {what}; run with {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
