"""Fixtures for the kfs table tests: real kernels, populated through the control grammar."""

from __future__ import annotations

import pytest
from kfs_helpers import make_kernel, populate

from ksmfs.kfs import Tree


@pytest.fixture
def kernel():
    return make_kernel("6.18")


@pytest.fixture
def tree(kernel):
    return Tree(kernel, btime=1_700_000_000)


@pytest.fixture
def pids(kernel):
    return populate(kernel)
